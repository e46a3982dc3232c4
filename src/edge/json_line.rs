//! Every JSON answer ends with a newline, as a line of text does: `curl`'s
//! output then ends on its own line instead of under the shell's prompt,
//! and a client that reads answers line by line gets whole lines. The
//! newline is JSON whitespace, so no parser minds it.

use axum::{body::Body, response::Response};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, header};
use http_body::Body as _;

/// Whether `headers` say the body is JSON.
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"))
}

/// Marks an answer another node gave (a forwarded request's): it ended its
/// JSON with a newline already, and this node passes it on as it came.
#[derive(Clone, Copy, Debug)]
pub struct Relayed;

/// Bodies up to this size that are already in memory are joined with the
/// newline into one buffer (keeping `content-length`); longer or streamed
/// ones get it as one more frame.
const JOIN_LIMIT: u64 = 64 * 1024;

/// `response` with a newline after its JSON body; any other answer as it
/// is.
pub async fn terminate(response: Response) -> Response {
    if !is_json(response.headers()) || response.extensions().get::<Relayed>().is_some() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let size = body.size_hint().exact();
    if size == Some(0) {
        // No body: a 204 has nothing to end; a HEAD answer (its body left
        // out, its length kept) says the length its GET sends, newline
        // included.
        let stated = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = stated.filter(|n| *n > 0) {
            parts.headers.insert(header::CONTENT_LENGTH, (n + 1).into());
        }
        return Response::from_parts(parts, body);
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = match size {
        Some(n) if n <= JOIN_LIMIT => match axum::body::to_bytes(body, usize::MAX).await {
            Ok(bytes) => {
                let mut joined = Vec::with_capacity(bytes.len() + 1);
                joined.extend_from_slice(&bytes);
                joined.push(b'\n');
                Body::from(joined)
            }
            Err(e) => Body::from_stream(futures_util::stream::once(
                async move { Err::<Bytes, _>(e) },
            )),
        },
        _ => Body::from_stream(
            body.into_data_stream()
                .chain(futures_util::stream::once(async {
                    Ok::<_, axum::Error>(Bytes::from_static(b"\n"))
                })),
        ),
    };
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use axum::{Json, response::IntoResponse};
    use http::StatusCode;

    use super::*;

    async fn text(response: Response) -> (HeaderMap, String) {
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
        (
            parts.headers,
            String::from_utf8(bytes.to_vec()).expect("utf-8"),
        )
    }

    #[tokio::test]
    async fn json_ends_with_one_newline_and_the_rest_is_left_alone() {
        let (_, json) =
            text(terminate(Json(serde_json::json!({"a": 1})).into_response()).await).await;
        assert_eq!(json, "{\"a\":1}\n");

        let (_, plain) = text(terminate("plain".into_response()).await).await;
        assert_eq!(plain, "plain");

        let mut relayed = Json(serde_json::json!({"b": 2})).into_response();
        relayed.extensions_mut().insert(Relayed);
        let (_, relayed) = text(terminate(relayed).await).await;
        assert_eq!(relayed, "{\"b\":2}\n".trim_end());

        let mut empty = (StatusCode::NO_CONTENT, Body::empty()).into_response();
        empty.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        let (_, empty) = text(terminate(empty).await).await;
        assert_eq!(empty, "");

        // A HEAD answer: no body, the GET's length with its newline.
        let mut head = Response::new(Body::empty());
        head.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        head.headers_mut()
            .insert(header::CONTENT_LENGTH, header::HeaderValue::from(7u64));
        let (headers, body) = text(terminate(head).await).await;
        assert_eq!(
            (
                headers[header::CONTENT_LENGTH].to_str().unwrap(),
                body.as_str()
            ),
            ("8", "")
        );
    }

    #[tokio::test]
    async fn a_streamed_body_gets_the_newline_as_a_last_frame() {
        let chunks = futures_util::stream::iter([
            Ok::<_, std::io::Error>(Bytes::from_static(b"[1,")),
            Ok(Bytes::from_static(b"2]")),
        ]);
        let mut response = Body::from_stream(chunks).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        let (headers, json) = text(terminate(response).await).await;
        assert_eq!(json, "[1,2]\n");
        assert!(headers.get(header::CONTENT_LENGTH).is_none());
    }
}
