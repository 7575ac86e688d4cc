//! Serving a file with HTTP range requests (RFC 9110, section 14), so a player can seek.
//!
//! One range per request: `bytes=a-b`, `bytes=a-` and `bytes=-n` get 206 with
//! `Content-Range`; a range that starts past the end gets 416 with `Content-Range: bytes */len`.
//! A request with several ranges, or a Range header this server does not understand, gets the
//! whole file (200), which the RFC allows. `If-Range` with another validator than the file's
//! `ETag` also gets the whole file. The body is streamed from the open file in 64 KiB pieces.

use std::fs::File;
use std::os::unix::fs::MetadataExt;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::shared::ApiError;

/// What a Range header asks of a file of a given length.
#[derive(Debug, PartialEq, Eq)]
pub enum Wanted {
    /// The whole file (no Range, or one this server ignores).
    Whole,
    /// Bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// Nothing of this file can satisfy it.
    Unsatisfiable,
}

/// Reads one `Range` header value against a file of `len` bytes.
pub fn wanted(range: &str, len: u64) -> Wanted {
    let Some(spec) = range
        .trim()
        .strip_prefix("bytes=")
        .or_else(|| range.trim().strip_prefix("Bytes="))
    else {
        return Wanted::Whole;
    };
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Wanted::Whole;
    };
    let number = |text: &str| -> Option<u64> {
        let text = text.trim();
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), number(first), number(last)) {
        // bytes=-n: the last n bytes.
        (true, _, Some(suffix)) => {
            if suffix == 0 || len == 0 {
                Wanted::Unsatisfiable
            } else {
                Wanted::Part {
                    start: len.saturating_sub(suffix),
                    end: len - 1,
                }
            }
        }
        (false, Some(start), None) if last.trim().is_empty() => {
            if start >= len {
                Wanted::Unsatisfiable
            } else {
                Wanted::Part {
                    start,
                    end: len - 1,
                }
            }
        }
        (false, Some(start), Some(end)) if start <= end => {
            if start >= len {
                Wanted::Unsatisfiable
            } else {
                Wanted::Part {
                    start,
                    end: end.min(len - 1),
                }
            }
        }
        // Malformed: ignored, as the RFC says.
        _ => Wanted::Whole,
    }
}

/// The file as a response to a GET with `request` headers: 200, 206 or 416.
pub fn serve_file(
    file: File,
    content_type: &'static str,
    cache_control: &'static str,
    request: &HeaderMap,
) -> Result<Response, ApiError> {
    let meta = file.metadata().map_err(ApiError::internal)?;
    let len = meta.len();
    let etag = format!(
        "\"{:x}-{len:x}-{:x}.{:x}\"",
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    if unchanged {
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    let range = request
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok());
    let fresh = request
        .get(header::IF_RANGE)
        .and_then(|value| value.to_str().ok())
        .is_none_or(|validator| validator.trim() == etag);
    let asked = match range {
        Some(range) if fresh => wanted(range, len),
        _ => Wanted::Whole,
    };
    let (status, start, count) = match asked {
        Wanted::Whole => (StatusCode::OK, 0, len),
        Wanted::Part { start, end } => {
            let value = format!("bytes {start}-{end}/{len}");
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(header::CONTENT_RANGE, value);
            }
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        Wanted::Unsatisfiable => {
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{len}")) {
                headers.insert(header::CONTENT_RANGE, value);
            }
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let body = serde_json::json!({
                "error": format!("the range `{}` lies outside the file's {len} bytes", range.unwrap_or("")),
            })
            .to_string();
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, headers, body).into_response());
        }
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    Ok((
        status,
        headers,
        Body::from_stream(stream(file, start, count)),
    )
        .into_response())
}

/// `count` bytes of `file` from `start`, in pieces.
fn stream(
    file: File,
    start: u64,
    count: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    const PIECE: u64 = 64 * 1024;
    let file = tokio::fs::File::from_std(file);
    futures_util::stream::unfold(
        (file, start, count, false),
        |(mut file, at, left, seeked)| async move {
            if left == 0 {
                return None;
            }
            if !seeked {
                if let Err(err) = file.seek(std::io::SeekFrom::Start(at)).await {
                    return Some((Err(err), (file, at, 0, true)));
                }
            }
            let mut buffer = vec![0u8; PIECE.min(left) as usize];
            match file.read(&mut buffer).await {
                Ok(0) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file got shorter while it was sent",
                    )),
                    (file, at, 0, true),
                )),
                Ok(n) => {
                    buffer.truncate(n);
                    let read = n as u64;
                    Some((
                        Ok(Bytes::from(buffer)),
                        (file, at + read, left - read, true),
                    ))
                }
                Err(err) => Some((Err(err), (file, at, 0, true))),
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges_are_understood() {
        let part = |start, end| Wanted::Part { start, end };
        assert_eq!(wanted("bytes=0-99", 1000), part(0, 99));
        assert_eq!(wanted("bytes=900-", 1000), part(900, 999));
        assert_eq!(wanted("bytes=-100", 1000), part(900, 999));
        assert_eq!(wanted("bytes=-5000", 1000), part(0, 999));
        assert_eq!(wanted("bytes=990-5000", 1000), part(990, 999));
        assert_eq!(wanted("bytes=999-999", 1000), part(999, 999));
    }

    #[test]
    fn ranges_past_the_end_are_unsatisfiable() {
        assert_eq!(wanted("bytes=1000-", 1000), Wanted::Unsatisfiable);
        assert_eq!(wanted("bytes=1000-2000", 1000), Wanted::Unsatisfiable);
        assert_eq!(wanted("bytes=-0", 1000), Wanted::Unsatisfiable);
        assert_eq!(wanted("bytes=0-", 0), Wanted::Unsatisfiable);
    }

    #[test]
    fn what_is_not_understood_gets_the_whole_file() {
        for header in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=+1-2",
            "bytes=1",
        ] {
            assert_eq!(wanted(header, 1000), Wanted::Whole, "{header}");
        }
    }
}
