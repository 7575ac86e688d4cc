//! A tiny HTTP/1.1 server on 127.0.0.1 that records webhook requests and
//! answers them as a test script says.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::within;

/// One request as received.
#[derive(Debug, Clone)]
pub(crate) struct ReceivedRequest {
    pub(crate) method: String,
    pub(crate) path: String,
    /// Names lowercased.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// The status we answered with; `None` when we never answered.
    pub(crate) answered: Option<u16>,
}

impl ReceivedRequest {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What to answer.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    pub(crate) fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub(crate) fn with_body(mut self, body: &str) -> Reply {
        self.body = body.to_string();
        self
    }
}

/// Decides the reply to the request with the given 0-based index; `None`
/// holds the connection open without answering.
type Script = dyn Fn(usize, &ReceivedRequest) -> Option<Reply> + Send + Sync;

/// The server. Dropping it stops it.
pub(crate) struct WebhookReceiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<ReceivedRequest>>>,
    count: watch::Receiver<usize>,
    task: JoinHandle<()>,
}

impl WebhookReceiver {
    pub(crate) async fn start(
        script: impl Fn(usize, &ReceivedRequest) -> Option<Reply> + Send + Sync + 'static,
    ) -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound socket has an address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0usize);
        let script: Arc<Script> = Arc::new(script);
        let shared = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            let count_tx = Arc::new(count_tx);
            while let Ok((stream, _)) = listener.accept().await {
                let (shared, script, count_tx) = (
                    Arc::clone(&shared),
                    Arc::clone(&script),
                    Arc::clone(&count_tx),
                );
                tokio::spawn(serve(stream, shared, script, count_tx));
            }
        });
        WebhookReceiver {
            addr,
            requests,
            count,
            task,
        }
    }

    /// Always answers `status`.
    pub(crate) async fn answering(status: u16) -> WebhookReceiver {
        Self::start(move |_, _| Some(Reply::status(status))).await
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Waits until at least `n` requests have arrived and returns them all.
    pub(crate) async fn wait_for(&self, n: usize) -> Vec<ReceivedRequest> {
        let mut count = self.count.clone();
        within(
            &format!("{n} webhook request(s)"),
            count.wait_for(|have| *have >= n),
        )
        .await
        .expect("invariant: the receiver's counter lives as long as the receiver");
        self.requests()
    }

    pub(crate) fn requests(&self) -> Vec<ReceivedRequest> {
        self.requests
            .lock()
            .expect("no test thread panicked holding the lock")
            .clone()
    }

    /// Requests answered with a 2xx status.
    pub(crate) fn accepted(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.answered.is_some_and(|s| (200..300).contains(&s)))
            .count()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    requests: Arc<Mutex<Vec<ReceivedRequest>>>,
    script: Arc<Script>,
    count: Arc<watch::Sender<usize>>,
) {
    let Some(mut request) = read_request(&mut stream).await else {
        return;
    };
    let reply = {
        let mut all = requests
            .lock()
            .expect("no test thread panicked holding the lock");
        let reply = script(all.len(), &request);
        request.answered = reply.as_ref().map(|r| r.status);
        all.push(request);
        reply
    };
    count.send_modify(|n| *n += 1);
    let Some(reply) = reply else {
        // Hold the connection until the client gives up.
        let mut sink = [0u8; 64];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        return;
    };
    let mut head = format!(
        "HTTP/1.1 {} Test\r\ncontent-length: {}\r\nconnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    // The client may already have gone (timeouts); nothing to do then.
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(reply.body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn read_request(stream: &mut TcpStream) -> Option<ReceivedRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let (method, path) = (
        request_line.next()?.to_string(),
        request_line.next()?.to_string(),
    );
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(ReceivedRequest {
        method,
        path,
        headers,
        body,
        answered: None,
    })
}
