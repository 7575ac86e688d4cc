//! A real SMTP server for the email tests: Python's `aiosmtpd`, driven by
//! `smtp_capture.py`, on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use super::within;

const SCRIPT: &str = include_str!("smtp_capture.py");

/// How the server protects the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SmtpMode {
    Plain,
    Starttls,
    Tls,
}

/// A message the server accepted.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CapturedMail {
    pub(crate) mail_from: String,
    pub(crate) rcpt_tos: Vec<String>,
    /// Top-level headers, names lowercased, values decoded.
    pub(crate) headers: std::collections::HashMap<String, String>,
    /// The top-level content type, e.g. `multipart/alternative`.
    pub(crate) content_type: String,
    /// The leaf parts in order, decoded.
    pub(crate) parts: Vec<CapturedPart>,
    /// The user name the client logged in with.
    pub(crate) login: Option<String>,
    /// Whether the session was encrypted.
    pub(crate) tls: bool,
}

/// One leaf MIME part of a captured message.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CapturedPart {
    #[serde(rename = "type")]
    pub(crate) content_type: String,
    pub(crate) text: String,
}

/// The running server; dropping it kills it.
pub(crate) struct SmtpCapture {
    pub(crate) port: u16,
    /// The CA that signed the server's certificate (TLS modes).
    pub(crate) ca_pem: Option<PathBuf>,
    lines: Lines<BufReader<ChildStdout>>,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl SmtpCapture {
    /// Starts the server, requiring `login` (user, password) when given.
    pub(crate) async fn start(mode: SmtpMode, login: Option<(&str, &str)>) -> SmtpCapture {
        require_aiosmtpd();
        let dir = tempfile::tempdir().expect("temp dir for the SMTP server");
        let script = dir.path().join("smtp_capture.py");
        std::fs::write(&script, SCRIPT).expect("write the SMTP server script");
        let mut command = Command::new("python3");
        command.arg(&script);
        command.arg("--mode").arg(match mode {
            SmtpMode::Plain => "plain",
            SmtpMode::Starttls => "starttls",
            SmtpMode::Tls => "tls",
        });
        let ca_pem = (mode != SmtpMode::Plain).then(|| {
            let (ca, cert, key) = make_certificates(dir.path());
            command.arg("--cert").arg(cert).arg("--key").arg(key);
            ca
        });
        if let Some((user, password)) = login {
            command
                .arg("--user")
                .arg(user)
                .arg("--password")
                .arg(password);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start python3 for the SMTP server");
        let stdout = child.stdout.take().expect("stdout was piped");
        let mut lines = BufReader::new(stdout).lines();
        let first = within("the SMTP server to start", lines.next_line())
            .await
            .expect("read the SMTP server's output")
            .expect("the SMTP server exited before printing its port; see its stderr above");
        let port = first
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the SMTP server: {first:?}"));
        SmtpCapture {
            port,
            ca_pem,
            lines,
            _child: child,
            _dir: dir,
        }
    }

    /// The next message the server accepts.
    pub(crate) async fn next_mail(&mut self) -> CapturedMail {
        let line = within("a message at the SMTP server", self.lines.next_line())
            .await
            .expect("read the SMTP server's output")
            .expect("the SMTP server exited; see its stderr above");
        serde_json::from_str(&line).unwrap_or_else(|err| panic!("bad capture line {line:?}: {err}"))
    }
}

/// The tests need a real SMTP server; a missing one must fail loudly, not
/// skip, so CI cannot pass without testing email.
fn require_aiosmtpd() {
    let found = std::process::Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "the email tests need Python 3 with the aiosmtpd package: run `pip install aiosmtpd` \
         (or `python3 -m pip install --user aiosmtpd`) and run the tests again"
    );
}

/// A throwaway CA and a certificate for 127.0.0.1 signed by it, made with
/// the `openssl` command. (A self-signed leaf would not do: rustls refuses
/// a CA certificate used as a server certificate.)
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|err| {
                panic!("the TLS email tests need the `openssl` command ({err}); install openssl")
            });
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"],
        &ec[..],
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=reelspool test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"],
        &ec[..],
        &[
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write the certificate extensions");
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    )
}
