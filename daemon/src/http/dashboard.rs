//! The dashboard: server-rendered HTML, one small script for live updates, cancelling and
//! priority changes.
//!
//! `/` lists the cards and the jobs; `/live` is the part of it that changes, which the script
//! fetches again on every server-sent event (and every 5 s). `/jobs/{id}` is one job with its
//! events, attempts, notices and, once done, its video (`/jobs/{id}/video`, served only from
//! the configured output roots).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Extension, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use jobs::state::{now_ms, Phase};
use serde_json::Value;

use super::api::{blocking, card_list, job_detail, reader, select_jobs};
use super::auth::Access;
use super::shared::{ApiError, Shared};

/// Finished jobs shown on the front page (all unfinished ones are).
const RECENT_FINISHED: usize = 20;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(front))
        .route("/live", get(live))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/video", get(video))
        .route("/jobs/{id}/thumbnail.jpg", get(thumbnail))
}

/// Text for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn human_secs(secs: f64) -> String {
    crate::jobview::human_secs(secs)
}

const STYLE: &str = r#"
body{font-family:system-ui,sans-serif;margin:0;padding:0 1rem 2rem;color:#1b1b1b;background:#fafafa}
header{display:flex;flex-wrap:wrap;gap:.5rem 1.5rem;align-items:center;padding:.6rem 0;border-bottom:1px solid #ddd}
h1{font-size:1.2rem;margin:0} h2{font-size:1rem;margin:1.2rem 0 .4rem}
table{border-collapse:collapse;width:100%;font-size:.9rem;background:#fff}
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #eee;vertical-align:middle}
.bar{background:#e6e6e6;border-radius:4px;height:.7rem;min-width:6rem;overflow:hidden}
.bar>span{display:block;height:100%;background:#3a7bd5}
.state{font-weight:600} .running{color:#1f6f3f} .failed{color:#b00020} .queued{color:#555}
.done{color:#244f9e} .cancelled{color:#777}
img.thumb{width:64px;height:64px;object-fit:cover;border-radius:3px;background:#ddd}
button{font:inherit;padding:.15rem .6rem}
#msg{color:#b00020}
@media (max-width:700px){.wide{display:none} td,th{padding:.3rem .25rem}}
video{max-width:100%}
"#;

const SCRIPT: &str = r#"
const live=document.getElementById('live');
let pending=false;
async function refresh(){
  if(!live||pending)return; pending=true;
  try{const r=await fetch('/live',{cache:'no-store'}); if(r.ok) live.innerHTML=await r.text();}catch(e){}
  pending=false;
}
let soon=null;
function refreshSoon(){ if(!soon) soon=setTimeout(()=>{soon=null;refresh();},300); }
if(live){
  try{const es=new EventSource('/api/v1/events'); es.addEventListener('job',refreshSoon);}catch(e){}
  setInterval(refresh,5000);
}
const tok=document.getElementById('token');
if(tok){tok.value=localStorage.getItem('reelspool-token')||'';
  tok.addEventListener('change',()=>localStorage.setItem('reelspool-token',tok.value));}
async function cancelJob(id){
  const msg=document.getElementById('msg');
  const headers={};
  const t=tok?tok.value.trim():'';
  if(t)headers['Authorization']='Bearer '+t;
  const r=await fetch('/api/v1/jobs/'+encodeURIComponent(id)+'/cancel',{method:'POST',headers});
  let body={};try{body=await r.json();}catch(e){}
  msg.textContent=r.ok?('cancel requested for '+id):('cancel refused: '+(body.error||r.status));
  msg.dataset.status=String(r.status);
  refresh();
}
async function setPriority(id){
  const msg=document.getElementById('msg');
  const n=Number(document.getElementById('prio').value);
  const headers={'Content-Type':'application/json'};
  const t=tok?tok.value.trim():'';
  if(t)headers['Authorization']='Bearer '+t;
  const r=await fetch('/api/v1/jobs/'+encodeURIComponent(id)+'/priority',
    {method:'POST',headers,body:JSON.stringify({priority:n})});
  let body={};try{body=await r.json();}catch(e){}
  msg.textContent=r.ok?('priority '+n+' requested for '+id):('priority refused: '+(body.error||r.status));
  msg.dataset.status=String(r.status);
}
"#;

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width,initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head><body>\
         <header><h1><a href=\"/\">reelspool</a></h1>\
         <label>token <input id=token type=password autocomplete=off size=16></label>\
         <span id=msg role=status></span></header>{body}<script>{SCRIPT}</script></body></html>",
        title = esc(title),
    ))
}

async fn front(State(shared): State<Arc<Shared>>) -> Result<Html<String>, ApiError> {
    let live = blocking(move || live_html(&shared)).await?;
    Ok(page("reelspool", &format!("<main id=live>{live}</main>")))
}

async fn live(State(shared): State<Arc<Shared>>) -> Result<Html<String>, ApiError> {
    Ok(Html(blocking(move || live_html(&shared)).await?))
}

fn bar(done: u64, total: Option<u64>) -> String {
    let percent = match total {
        Some(total) if total > 0 => (done as f64 / total as f64 * 100.0).min(100.0),
        _ => 0.0,
    };
    format!("<div class=bar><span style=\"width:{percent:.0}%\"></span></div>")
}

/// The cards and the jobs (every unfinished one, the latest finished ones).
fn live_html(shared: &Shared) -> Result<String, ApiError> {
    let mut out = String::new();
    let cards = card_list(shared)?;
    out.push_str("<h2>GPUs</h2><table id=gpus><tr><th>card</th><th>memory</th><th class=wide>state</th><th>job</th></tr>");
    for card in cards["cards"].as_array().into_iter().flatten() {
        let total = card["memory_total_bytes"].as_u64().unwrap_or(0);
        let used = card["memory_used_bytes"].as_u64();
        let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
        let memory = match used {
            Some(used) => format!(
                "{}{:.1} / {:.1} GiB",
                bar(used, Some(total)),
                gib(used),
                gib(total)
            ),
            None => format!("{:.1} GiB", gib(total)),
        };
        let state = if card["drained"].as_bool() == Some(true) {
            "drained"
        } else if card["healthy"].as_bool() == Some(false) {
            "unusable"
        } else {
            "in service"
        };
        let job = card["job"]
            .as_str()
            .map(|id| format!("<a href=\"/jobs/{0}\">{0}</a>", esc(id)))
            .unwrap_or_else(|| "-".into());
        let _ = write!(
            out,
            "<tr><td>{} #{}<br><small>{}</small></td><td>{memory}</td><td class=wide>{state}</td><td>{job}</td></tr>",
            esc(card["name"].as_str().unwrap_or("")),
            card["index"],
            esc(card["uuid"].as_str().unwrap_or("")),
        );
    }
    out.push_str("</table>");
    let (_, mut jobs) = select_jobs(shared, &[Phase::Running, Phase::Queued], 0, usize::MAX)?;
    let (_, finished) = select_jobs(
        shared,
        &[Phase::Done, Phase::Failed, Phase::Cancelled],
        0,
        RECENT_FINISHED,
    )?;
    jobs.sort_by_key(|entry| entry.phase != Phase::Running);
    jobs.extend(finished);
    out.push_str("<h2>Jobs</h2><table id=jobs><tr><th></th><th>job</th><th>state</th><th class=wide>card</th><th>progress</th><th>ETA</th><th class=wide>age</th><th></th></tr>");
    let now = now_ms();
    for entry in &jobs {
        let id = entry.id.to_string();
        let phase = entry.phase.as_str();
        let thumb = if entry.phase == Phase::Running {
            format!("<img class=thumb alt=\"\" src=\"/jobs/{}/thumbnail.jpg?clip={}\" onerror=\"this.style.visibility='hidden'\">", esc(&id), entry.clips_done)
        } else {
            String::new()
        };
        let progress = match entry.clips_total {
            Some(total) => format!(
                "{}<small class=clips>clip {} of {}</small>",
                bar(u64::from(entry.clips_done), Some(u64::from(total))),
                entry.clips_done,
                total
            ),
            None => "<small class=clips>-</small>".to_string(),
        };
        let eta = match (entry.phase, entry.eta_secs) {
            (Phase::Running, Some(eta)) => human_secs(eta),
            _ => "-".into(),
        };
        let age = human_secs(now.saturating_sub(entry.submitted_at_ms) as f64 / 1000.0);
        let cancel = if entry.phase.is_terminal() {
            String::new()
        } else {
            format!(
                "<button class=cancel data-job=\"{0}\" onclick=\"cancelJob('{0}')\">cancel</button>",
                esc(&id)
            )
        };
        let _ = write!(
            out,
            "<tr class=job data-job=\"{idq}\" data-phase=\"{phase}\"><td>{thumb}</td>\
             <td><a href=\"/jobs/{idq}\">{name}</a><br><small>{idq}</small></td>\
             <td class=\"state {phase}\">{phase}</td><td class=wide>{gpu}</td>\
             <td>{progress}</td><td>{eta}</td><td class=wide>{age}</td><td>{cancel}</td></tr>",
            idq = esc(&id),
            name = esc(&entry.name),
            gpu = esc(entry.gpu.as_deref().unwrap_or("-")),
        );
    }
    if jobs.is_empty() {
        out.push_str("<tr><td colspan=8>no jobs yet</td></tr>");
    }
    out.push_str("</table>");
    Ok(out)
}

async fn job_page(
    State(shared): State<Arc<Shared>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Html<String>, ApiError> {
    let uid = reader(&access);
    let detail = blocking(move || job_detail(&shared, uid, &id)).await?;
    Ok(page(
        detail["job"]["name"].as_str().unwrap_or("job"),
        &job_html(&detail),
    ))
}

fn job_html(detail: &Value) -> String {
    let job = &detail["job"];
    let id = job["id"].as_str().unwrap_or("");
    let phase = job["phase"].as_str().unwrap_or("");
    let text = |value: &Value| match value {
        Value::Null => "-".to_string(),
        Value::String(s) => esc(s),
        other => esc(&other.to_string()),
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "<h2>{name}</h2><table id=job>\
         <tr><th>id</th><td>{idq}</td></tr>\
         <tr><th>state</th><td class=\"state {phase}\">{phase}</td></tr>\
         <tr><th>card</th><td>{gpu}</td></tr>\
         <tr><th>progress</th><td>{bar}clip {done} of {total}</td></tr>\
         <tr><th>attempts</th><td>{attempts}</td></tr>\
         <tr><th>priority</th><td>{priority}</td></tr>\
         <tr><th>output</th><td>{output}</td></tr>\
         <tr><th>error</th><td>{error}</td></tr></table>",
        name = text(&job["name"]),
        idq = esc(id),
        gpu = text(&job["gpu"]),
        bar = bar(
            job["clips_done"].as_u64().unwrap_or(0),
            job["clips_total"].as_u64()
        ),
        done = job["clips_done"].as_u64().unwrap_or(0),
        total = text(&job["clips_total"]),
        attempts = text(&job["attempts"]),
        priority = text(&job["priority"]),
        output = text(&job["output"]),
        error = text(&job["error"]),
    );
    if phase == "running" {
        let _ = write!(
            out,
            "<p><img alt=\"the latest frame\" src=\"/jobs/{}/thumbnail.jpg?clip={}\" \
             onerror=\"this.style.visibility='hidden'\"></p>",
            esc(id),
            job["clips_done"].as_u64().unwrap_or(0)
        );
    }
    if phase == "running" || phase == "queued" {
        let _ = write!(
            out,
            "<p><button class=cancel onclick=\"cancelJob('{0}')\">cancel</button> \
             <label>priority <input id=prio type=number min=-1000 max=1000 step=1 \
             value=\"{1}\"></label> \
             <button class=priority onclick=\"setPriority('{0}')\">set priority</button></p>",
            esc(id),
            job["priority"].as_i64().unwrap_or(0)
        );
    }
    if phase == "done" {
        let _ = write!(
            out,
            "<h2>Video</h2><video controls preload=metadata src=\"/jobs/{}/video\"></video>",
            esc(id)
        );
    }
    out.push_str("<h2>Notices</h2><table id=notices><tr><th>kind</th><th>channel</th><th>to</th><th>state</th></tr>");
    for notice in detail["notices"].as_array().into_iter().flatten() {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            text(&notice["kind"]),
            text(&notice["channel"]),
            text(&notice["target"]),
            text(&notice["state"]),
        );
    }
    out.push_str("</table><h2>Events</h2><table id=events><tr><th>time</th><th>event</th><th>details</th></tr>");
    for event in detail["events"].as_array().into_iter().flatten() {
        let mut fields = event.clone();
        let when = fields
            .get("ts_ms")
            .and_then(Value::as_u64)
            .map(|ts| human_secs(now_ms().saturating_sub(ts) as f64 / 1000.0) + " ago")
            .unwrap_or_default();
        let name = fields
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Some(map) = fields.as_object_mut() {
            map.remove("ts_ms");
            map.remove("event");
        }
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td><small>{}</small></td></tr>",
            esc(&when),
            esc(&name),
            esc(&fields.to_string()),
        );
    }
    out.push_str("</table>");
    out
}

/// The finished video, only when it lies under one of the configured output roots.
async fn video(
    State(shared): State<Arc<Shared>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let uid = reader(&access);
    let bytes = blocking(move || {
        let detail = job_detail(&shared, uid, &id)?;
        let Some(output) = detail["job"]["output"].as_str() else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "the job has no video (yet)",
            ));
        };
        if detail["job"]["phase"].as_str() != Some("done") {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "the job is not done"));
        }
        let path = std::fs::canonicalize(output).map_err(|err| {
            ApiError::new(StatusCode::NOT_FOUND, format!("the video is gone: {err}"))
        })?;
        let allowed = shared
            .config
            .allowed_roots
            .outputs
            .iter()
            .filter_map(|root| std::fs::canonicalize(root).ok())
            .any(|root| path.starts_with(root));
        if !allowed {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "the video is outside the configured output roots",
            ));
        }
        std::fs::read(&path).map_err(|err| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("cannot read the video: {err}"),
            )
        })
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "video/mp4")], bytes).into_response())
}

/// The newest clip thumbnail the worker wrote (`work/clips/<k>.jpg`, highest k).
async fn thumbnail(
    State(shared): State<Arc<Shared>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let uid = reader(&access);
    let bytes = blocking(move || {
        let detail = job_detail(&shared, uid, &id)?;
        let id = detail["job"]["id"].as_str().unwrap_or_default();
        let clips = jobs::state::JobDir::new(shared.layout.jobs.join(id))
            .work_dir()
            .join("clips");
        let newest = std::fs::read_dir(&clips)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|item| {
                let name = item.file_name().into_string().ok()?;
                let index: u32 = name.strip_suffix(".jpg")?.parse().ok()?;
                Some((index, item.path()))
            })
            .max_by_key(|(index, _)| *index);
        let Some((_, path)) = newest else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no clip of this job has a thumbnail yet",
            ));
        };
        std::fs::read(&path).map_err(|err| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("cannot read the thumbnail: {err}"),
            )
        })
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_names_is_escaped() {
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn bars_are_clamped() {
        assert!(bar(3, Some(4)).contains("width:75%"));
        assert!(bar(9, Some(4)).contains("width:100%"));
        assert!(bar(1, None).contains("width:0%"));
    }
}
