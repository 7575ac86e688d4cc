//! Who is asking: a loopback or remote TCP peer, or a uid on the socket, and whether the
//! request carries the token.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use tokio::net::UnixListener;

use super::shared::{ApiError, Shared};

/// The uid of a process on the other end of the socket, from the kernel.
#[derive(Clone, Debug)]
pub struct PeerCred {
    uid: Option<u32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for PeerCred {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        PeerCred {
            uid: stream.io().peer_cred().ok().map(|cred| cred.uid()),
        }
    }
}

/// Where a request came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// TCP from 127.0.0.0/8 or ::1.
    Loopback,
    /// TCP from anywhere else (only served with the token).
    Remote,
    /// The unix socket; the uid is root, the service user or a member of the submit group.
    Socket { uid: u32 },
}

/// What the handlers learn about the caller.
#[derive(Clone, Debug)]
pub struct Access {
    pub caller: Caller,
    /// The request carried the configured token.
    pub token: bool,
}

impl Access {
    /// The uid an action is taken as: the service's own for the token, the caller's on the
    /// socket. Loopback without the token may only read.
    pub fn actor(&self) -> Result<u32, ApiError> {
        if self.token {
            // SAFETY: geteuid cannot fail and touches no memory.
            return Ok(unsafe { libc::geteuid() });
        }
        match self.caller {
            Caller::Socket { uid } => Ok(uid),
            Caller::Loopback | Caller::Remote => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this action needs the token: send `Authorization: Bearer <token>` \
                 (the token is in the daemon's http-token credential), or use the unix socket",
            )),
        }
    }
}

/// Compares without stopping at the first difference, so timing tells nothing about the token.
fn same_secret(given: &[u8], wanted: &[u8]) -> bool {
    if given.len() != wanted.len() {
        return false;
    }
    given
        .iter()
        .zip(wanted)
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

fn has_token(shared: &Shared, request: &Request) -> bool {
    let Some(wanted) = &shared.token else {
        return false;
    };
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|given| same_secret(given.trim().as_bytes(), wanted.as_bytes()))
}

/// TCP: loopback reads freely; any other address needs the token for everything.
pub async fn tcp_caller(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = has_token(&shared, &request);
    let caller = if peer.ip().to_canonical().is_loopback() {
        Caller::Loopback
    } else {
        Caller::Remote
    };
    if caller == Caller::Remote && !token {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "requests from other machines need the token: send `Authorization: Bearer <token>`",
        )
        .into_response();
    }
    request.extensions_mut().insert(Access { caller, token });
    next.run(request).await
}

/// The socket: only root, the service user and members of the submit group are served.
pub async fn socket_caller(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = has_token(&shared, &request);
    let Some(uid) = peer.uid else {
        return ApiError::new(StatusCode::FORBIDDEN, "cannot learn who is on the socket")
            .into_response();
    };
    let person = shared.control.policy.person(uid);
    if let Err(refusal) = shared.control.policy.may_submit(&person) {
        return ApiError::new(StatusCode::FORBIDDEN, format!("refused: {refusal}")).into_response();
    }
    request.extensions_mut().insert(Access {
        caller: Caller::Socket { uid },
        token,
    });
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"", b"abc"));
    }

    #[test]
    fn loopback_without_the_token_may_only_read() {
        let access = Access {
            caller: Caller::Loopback,
            token: false,
        };
        assert!(access.actor().is_err());
        let with_token = Access {
            caller: Caller::Loopback,
            token: true,
        };
        assert!(with_token.actor().is_ok());
        let socket = Access {
            caller: Caller::Socket { uid: 1234 },
            token: false,
        };
        assert_eq!(socket.actor().ok(), Some(1234));
    }
}
