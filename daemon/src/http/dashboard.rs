//! The dashboard: server-rendered HTML, one small script for live updates, cancelling and
//! priority changes, and charts drawn as SVG on the server (`charts`).
//!
//! `/` lists the cards and the jobs, then plots the cards' last hour and the farm's last day
//! (from `history`); `/live` is the part that changes, which the script fetches again on every
//! server-sent event (and every 5 s), `/plots` the plots (every 30 s). `/jobs/{id}` is one job
//! with its events, attempts and notices, seconds per clip and a thumbnail per clip (`/parts`,
//! fetched again every 5 s while it runs), the live preview while it runs and the video once
//! done (both served by `playback`).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Extension, Path, State};
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use jobs::state::{now_ms, Phase};
use serde_json::Value;

use super::api::{blocking, card_list, job_detail, reader, select_jobs};
use super::auth::Access;
use super::charts::{bar_chart, line_chart, Series, Unit};
use super::history::{CARD_SAMPLE_SECS, FARM_BUCKET_SECS, HOST_SERIES};
use super::shared::{ApiError, Shared};

/// Finished jobs shown on the front page (all unfinished ones are).
const RECENT_FINISHED: usize = 20;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(front))
        .route("/live", get(live))
        .route("/plots", get(plots))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/parts", get(job_parts))
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
video{max-width:100%;max-height:60vh;background:#000}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:.6rem}
svg.chart{width:100%;height:auto;background:#fff;border:1px solid #e4e4e4;border-radius:4px;font-size:11px}
svg.chart .title{font-weight:600;fill:#1b1b1b} svg.chart .axis{fill:#666} svg.chart .grid{stroke:#eee}
svg.chart .mean{stroke:#b00020;stroke-dasharray:3 2}
.strip{display:flex;gap:4px;overflow-x:auto;padding:.3rem 0}
.strip img{height:64px;min-width:32px;border-radius:3px;background:#ddd;flex:none}
.jobcharts{max-width:640px}
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
async function reload(el,url){
  try{const r=await fetch(url,{cache:'no-store'}); if(r.ok) el.innerHTML=await r.text();}catch(e){}
}
const plots=document.getElementById('plots');
if(plots) setInterval(()=>reload(plots,'/plots'),30000);
const parts=document.getElementById('jobparts');
if(parts&&parts.dataset.live==='1') setInterval(()=>reload(parts,parts.dataset.src),5000);
const lv=document.getElementById('livevideo');
if(lv){
  if(!lv.canPlayType('application/vnd.apple.mpegurl')) document.getElementById('livenote').hidden=false;
  // A playlist with no clip yet, or a network hiccup: try again in a moment.
  lv.addEventListener('error',()=>setTimeout(()=>{lv.src=lv.dataset.src+'?t='+Date.now();lv.play().catch(()=>{});},3000));
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
async function cancelBatch(id){
  const msg=document.getElementById('msg');
  const headers={};
  const t=tok?tok.value.trim():'';
  if(t)headers['Authorization']='Bearer '+t;
  const r=await fetch('/api/v1/batches/'+encodeURIComponent(id)+'/cancel',{method:'POST',headers});
  let body={};try{body=await r.json();}catch(e){}
  msg.textContent=r.ok?('cancel requested for batch '+id):('cancel refused: '+(body.error||r.status));
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
    let (live, plots) = blocking(move || Ok((live_html(&shared)?, plots_html(&shared)))).await?;
    Ok(page(
        "reelspool",
        &format!("<main id=live>{live}</main><section id=plots>{plots}</section>"),
    ))
}

async fn plots(State(shared): State<Arc<Shared>>) -> Html<String> {
    Html(plots_html(&shared))
}

/// The cards' last hour and the farm's last day, from the history.
fn plots_html(shared: &Shared) -> String {
    let now = now_ms() / 1000;
    let ago = |t: u64| t as f64 - now as f64;
    let (cards, farm) = shared.history.snapshot();
    let mut out = String::from("<h2>Cards, last hour</h2><div class=plots>");
    if cards.is_empty() {
        out.push_str("<p>no samples yet</p>");
    }
    for (uuid, series) in &cards {
        let host = series.kind == HOST_SERIES;
        let busy: Vec<(f64, f64)> = series
            .points
            .iter()
            .filter_map(|p| Some((ago(p.t), f64::from(p.util?))))
            .collect();
        let memory: Vec<(f64, f64)> = series
            .points
            .iter()
            .filter_map(|p| {
                let used = p.used?;
                (p.total > 0).then(|| (ago(p.t), used as f64 / p.total as f64))
            })
            .collect();
        let mut lines = Vec::new();
        if !busy.is_empty() {
            lines.push(Series {
                name: if host { "CPU" } else { "utilisation" },
                color: "#3a7bd5",
                points: busy,
            });
        }
        lines.push(Series {
            name: if host { "RAM" } else { "memory" },
            color: "#d5803a",
            points: memory,
        });
        let title = match series.points.back() {
            Some(last) => format!(
                "{} · {} of {}",
                series.name,
                Unit::Bytes.label(last.used.unwrap_or(0) as f64),
                Unit::Bytes.label(last.total as f64)
            ),
            None => series.name.clone(),
        };
        out.push_str(&line_chart(
            &format!("card-{uuid}"),
            &title,
            &lines,
            -3600.0,
            0.0,
            3.0 * CARD_SAMPLE_SECS as f64,
            1.0,
            Unit::Ratio,
            ["-60 min", "-30 min", "now"],
        ));
    }
    out.push_str("</div><h2>Farm, last day</h2><div class=plots>");
    let day = |id: &str, title: &str, series: &[Series<'_>]| {
        line_chart(
            id,
            title,
            series,
            -86_400.0,
            0.0,
            2.0 * FARM_BUCKET_SECS as f64 + 1.0,
            1.0,
            Unit::Plain,
            ["-24 h", "-12 h", "now"],
        )
    };
    let points = |value: &dyn Fn(&super::history::FarmPoint) -> f64| -> Vec<(f64, f64)> {
        farm.iter().map(|p| (ago(p.t), value(p))).collect()
    };
    out.push_str(&day(
        "farm-clips",
        "clips per minute",
        &[Series {
            name: "clips/min",
            color: "#1f6f3f",
            points: points(&|p| f64::from(p.clips)),
        }],
    ));
    out.push_str(&day(
        "farm-frames",
        "frames per second",
        &[Series {
            name: "frames/s",
            color: "#3a7bd5",
            points: points(&|p| p.frames as f64 / FARM_BUCKET_SECS as f64),
        }],
    ));
    out.push_str(&day(
        "farm-queue",
        "jobs queued and running",
        &[
            Series {
                name: "queued",
                color: "#d5803a",
                points: points(&|p| f64::from(p.queued)),
            },
            Series {
                name: "running",
                color: "#1f6f3f",
                points: points(&|p| f64::from(p.running)),
            },
        ],
    ));
    out.push_str("</div>");
    out
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
        let host = &card["host"];
        let memory = if card["kind"] == "cpu" {
            // A CPU slot's memory is a placement figure; the host's RAM and CPU mean something.
            match (
                host["memory_used_bytes"].as_u64(),
                host["memory_total_bytes"].as_u64(),
            ) {
                (Some(used), Some(total)) => format!(
                    "{}<small class=host>host RAM {:.1} / {:.1} GiB{}</small>",
                    bar(used, Some(total)),
                    gib(used),
                    gib(total),
                    host["cpu_busy_ratio"]
                        .as_f64()
                        .map(|busy| format!(" · CPU {:.0}%", busy * 100.0))
                        .unwrap_or_default()
                ),
                _ => "<small class=host>CPU slot (host RAM)</small>".to_string(),
            }
        } else {
            match used {
                Some(used) => format!(
                    "{}{:.1} / {:.1} GiB",
                    bar(used, Some(total)),
                    gib(used),
                    gib(total)
                ),
                None => format!("{:.1} GiB", gib(total)),
            }
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
    batches_html(shared, &mut out);
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
        let thumb = match entry.phase {
            Phase::Running => format!("<img class=thumb alt=\"\" src=\"/jobs/{}/thumbnail.jpg?clip={}\" onerror=\"this.style.visibility='hidden'\">", esc(&id), entry.clips_done),
            Phase::Done => format!("<img class=\"thumb poster\" alt=\"\" loading=lazy src=\"/jobs/{}/poster.jpg\" onerror=\"this.style.visibility='hidden'\">", esc(&id)),
            _ => String::new(),
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

/// The batches: every unfinished one and the latest finished ones, each with its progress.
fn batches_html(shared: &Shared, out: &mut String) {
    let views = super::api::batch_list(shared);
    if views.is_empty() {
        return;
    }
    out.push_str("<h2>Batches</h2><table id=batches><tr><th>batch</th><th>state</th><th>jobs</th><th>clips</th><th></th></tr>");
    let mut finished = 0;
    for view in &views {
        if view.ended() {
            finished += 1;
            if finished > RECENT_FINISHED {
                continue;
            }
        }
        let id = view.record.id.to_string();
        let ended = view.done + view.failed + view.cancelled;
        let mut counts = format!("{} of {} done", view.done, view.total);
        for (n, what) in [
            (view.failed, "failed"),
            (view.cancelled, "cancelled"),
            (view.running, "running"),
            (view.queued, "queued"),
        ] {
            if n > 0 {
                let _ = write!(counts, ", {n} {what}");
            }
        }
        let clips = match view.clips_total {
            Some(total) => format!("{} / {total}", view.clips_done),
            None => view.clips_done.to_string(),
        };
        let cancel = if view.ended() {
            String::new()
        } else {
            format!(
                "<button class=cancel onclick=\"cancelBatch('{0}')\">cancel batch</button>",
                esc(&id)
            )
        };
        let _ = write!(
            out,
            "<tr class=batch data-batch=\"{idq}\" data-phase=\"{phase}\"><td><a href=\"/api/v1/batches/{idq}\">{name}</a><br><small>{idq}</small></td>\
             <td class=\"state {phase}\">{phase}</td><td>{bar}<small class=batchjobs>{counts}</small></td><td>{clips}</td><td>{cancel}</td></tr>",
            idq = esc(&id),
            name = esc(&view.record.name),
            phase = esc(&view.phase),
            bar = bar(ended as u64, Some(view.total as u64)),
        );
    }
    out.push_str("</table>");
}

/// The job's details as the caller may see them (the control socket's rules).
async fn visible_detail(
    shared: Arc<Shared>,
    access: &Access,
    id: String,
) -> Result<Value, ApiError> {
    let uid = reader(access);
    blocking(move || job_detail(&shared, uid, &id)).await
}

async fn job_page(
    State(shared): State<Arc<Shared>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Html<String>, ApiError> {
    let detail = visible_detail(shared, &access, id).await?;
    Ok(page(
        detail["job"]["name"].as_str().unwrap_or("job"),
        &job_html(&detail),
    ))
}

async fn job_parts(
    State(shared): State<Arc<Shared>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> Result<Html<String>, ApiError> {
    Ok(Html(job_parts_html(
        &visible_detail(shared, &access, id).await?,
    )))
}

/// HTML text of a JSON value: `-` for null, strings without their quotes.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => esc(s),
        other => esc(&other.to_string()),
    }
}

/// Seconds per clip from the job's `clip_done` events (the latest one per clip), one slot per
/// clip of the job.
fn clip_seconds(detail: &Value) -> Vec<Option<f64>> {
    let mut secs: Vec<Option<f64>> = Vec::new();
    for event in detail["events"].as_array().into_iter().flatten() {
        if event["event"] != "clip_done" {
            continue;
        }
        let (Some(index), Some(value)) = (event["index"].as_u64(), event["secs"].as_f64()) else {
            continue;
        };
        let Ok(index) = usize::try_from(index) else {
            continue;
        };
        if secs.len() <= index {
            secs.resize(index + 1, None);
        }
        secs[index] = Some(value);
    }
    let total = detail["job"]["clips_total"]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    if secs.len() < total {
        secs.resize(total, None);
    }
    secs
}

/// A job's state, id, phase and finished clips, from its details.
fn job_basics(detail: &Value) -> (&Value, &str, &str, u64) {
    let job = &detail["job"];
    (
        job,
        job["id"].as_str().unwrap_or(""),
        job["phase"].as_str().unwrap_or(""),
        job["clips_done"].as_u64().unwrap_or(0),
    )
}

/// The part of a job's page that changes while it runs: the table, the latest frame, the
/// seconds per clip and a thumbnail per finished clip.
/// A command engine's latest `progress` line: "step 3 of 8 · denoising" (or `-`).
pub fn engine_progress(progress: &Value) -> String {
    if progress.is_null() {
        return "-".into();
    }
    let mut parts = Vec::new();
    if let Some(clip) = progress["clip"].as_u64() {
        parts.push(format!("clip {clip}"));
    }
    match (progress["step"].as_u64(), progress["total"].as_u64()) {
        (Some(step), Some(total)) => parts.push(format!("step {step} of {total}")),
        (Some(step), None) => parts.push(format!("step {step}")),
        _ => {}
    }
    if let Some(message) = progress["message"].as_str() {
        parts.push(esc(message));
    }
    parts.join(" · ")
}

fn job_parts_html(detail: &Value) -> String {
    let (job, id, phase, done) = job_basics(detail);
    let mut out = String::new();
    let _ = write!(
        out,
        "<table id=job>\
         <tr><th>id</th><td>{idq}</td></tr>\
         <tr><th>state</th><td class=\"state {phase}\">{phase}</td></tr>\
         <tr><th>card</th><td>{gpu}</td></tr>\
         <tr><th>progress</th><td>{bar}clip {done} of {total}</td></tr>\
         <tr><th>attempts</th><td>{attempts}</td></tr>\
         <tr><th>priority</th><td>{priority}</td></tr>\
         <tr><th>batch</th><td>{batch}</td></tr>\
         <tr><th>engine</th><td id=engineprogress>{engine}</td></tr>\
         <tr><th>output</th><td>{output}</td></tr>\
         <tr><th>error</th><td>{error}</td></tr></table>",
        idq = esc(id),
        gpu = text(&job["gpu"]),
        bar = bar(done, job["clips_total"].as_u64()),
        total = text(&job["clips_total"]),
        attempts = text(&job["attempts"]),
        priority = text(&job["priority"]),
        batch = text(&job["batch"]),
        engine = engine_progress(&job["details"]["engine_progress"]),
        output = text(&job["output"]),
        error = text(&job["error"]),
    );
    if phase == "running" {
        let _ = write!(
            out,
            "<p><img alt=\"the latest frame\" src=\"/jobs/{}/thumbnail.jpg?clip={done}\" \
             onerror=\"this.style.visibility='hidden'\"></p>",
            esc(id),
        );
    }
    let secs = clip_seconds(detail);
    if secs.iter().any(Option::is_some) {
        out.push_str("<div class=jobcharts>");
        out.push_str(&bar_chart(
            "clip-seconds",
            "seconds per clip",
            &secs,
            "#3a7bd5",
            Unit::Seconds,
        ));
        out.push_str("</div>");
    }
    if done > 0 {
        out.push_str("<h2>Clips</h2><div class=strip id=strip>");
        for k in 0..done {
            let _ = write!(
                out,
                "<img loading=lazy alt=\"clip {k}\" title=\"clip {k}\" src=\"/jobs/{}/clips/{k}.jpg\" \
                 onerror=\"this.style.visibility='hidden'\">",
                esc(id)
            );
        }
        out.push_str("</div>");
    }
    out
}

fn job_html(detail: &Value) -> String {
    let (job, id, phase, done) = job_basics(detail);
    let mut out = String::new();
    let _ = write!(
        out,
        "<h2>{name}</h2><div id=jobparts data-live=\"{live}\" data-src=\"/jobs/{idq}/parts\">{parts}</div>",
        name = text(&job["name"]),
        live = u8::from(phase == "running" || phase == "queued"),
        idq = esc(id),
        parts = job_parts_html(detail),
    );
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
    // The clips so far, as they are finished: while it runs, and what a failed or cancelled
    // job got to.
    if phase == "running" || (matches!(phase, "failed" | "cancelled") && done > 0) {
        let _ = write!(
            out,
            "<h2>Live preview</h2><video id=livevideo controls muted autoplay playsinline \
             data-src=\"/jobs/{0}/live.m3u8\" src=\"/jobs/{0}/live.m3u8\"></video>\
             <p id=livenote hidden>This browser does not play HLS itself (Chromium, Chrome, Edge \
             and Safari do); open <a href=\"/jobs/{0}/live.m3u8\">the playlist</a> in a player \
             such as mpv or VLC.</p>",
            esc(id)
        );
    }
    if phase == "done" {
        let _ = write!(
            out,
            "<h2>Video</h2><video id=video controls preload=metadata poster=\"/jobs/{0}/poster.jpg\" \
             src=\"/jobs/{0}/video\"></video>",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_names_is_escaped() {
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn seconds_per_clip_take_the_latest_attempt_and_leave_gaps() {
        let detail = serde_json::json!({
            "job": { "clips_total": 4 },
            "events": [
                { "event": "clip_done", "index": 0, "secs": 2.0, "frames": 8 },
                { "event": "retry" },
                { "event": "clip_done", "index": 2, "secs": 3.0, "frames": 8 },
                { "event": "clip_done", "index": 0, "secs": 1.5, "frames": 8 },
            ],
        });
        assert_eq!(
            clip_seconds(&detail),
            vec![Some(1.5), None, Some(3.0), None]
        );
    }

    #[test]
    fn bars_are_clamped() {
        assert!(bar(3, Some(4)).contains("width:75%"));
        assert!(bar(9, Some(4)).contains("width:100%"));
        assert!(bar(1, None).contains("width:0%"));
    }
}
