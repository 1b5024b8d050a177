//! A WebSocket client of the JSON protocol, for tests: every read has a
//! deadline.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The upgrade was refused with this HTTP status.
    #[error("upgrade refused with HTTP {0}")]
    Rejected(u16),
    #[error("nothing received within {0:?}")]
    Timeout(Duration),
    /// The server closed the connection (with this close code, if any).
    #[error("closed by the server (code {code:?}, reason {reason:?})")]
    Closed { code: Option<u16>, reason: String },
    #[error("not a JSON text frame: {0}")]
    NotJson(String),
    #[error("websocket: {0}")]
    Ws(#[from] tungstenite::Error),
}

/// One client connection.
pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects to `ws_url` with `token` as the `token` query parameter
    /// (as browsers do).
    pub async fn connect(ws_url: &str, token: &str) -> Result<WsClient, WsError> {
        let url = format!("{ws_url}?token={token}");
        Self::open(url.into_client_request()?).await
    }

    /// Connects with `Authorization: Bearer <token>` instead.
    pub async fn connect_with_header(ws_url: &str, token: &str) -> Result<WsClient, WsError> {
        let mut request = ws_url.into_client_request()?;
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|e| WsError::Ws(tungstenite::Error::HttpFormat(e.into())))?;
        request.headers_mut().insert("authorization", value);
        Self::open(request).await
    }

    async fn open(request: tungstenite::handshake::client::Request) -> Result<WsClient, WsError> {
        match tokio_tungstenite::connect_async(request).await {
            Ok((stream, _)) => Ok(WsClient { stream }),
            Err(tungstenite::Error::Http(response)) => {
                Err(WsError::Rejected(response.status().as_u16()))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn send_json(&mut self, value: &Value) -> Result<(), WsError> {
        self.send_text(&value.to_string()).await
    }

    /// Sends any text, JSON or not (for bad-input tests).
    pub async fn send_text(&mut self, text: &str) -> Result<(), WsError> {
        Ok(self.stream.send(Message::text(text)).await?)
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), WsError> {
        Ok(self.stream.send(Message::binary(bytes)).await?)
    }

    /// The next JSON frame, waiting at most `timeout`. Pings are answered
    /// and skipped; a close is [`WsError::Closed`].
    pub async fn recv_json(&mut self, timeout: Duration) -> Result<Value, WsError> {
        self.recv_before(Instant::now() + timeout, timeout).await
    }

    /// Frames until one matches `pred`, which is returned; the others are
    /// dropped. Waits at most `timeout` in all.
    pub async fn recv_until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value, WsError> {
        let deadline = Instant::now() + timeout;
        loop {
            let frame = self.recv_before(deadline, timeout).await?;
            if pred(&frame) {
                return Ok(frame);
            }
        }
    }

    /// The next frame whose `type` is `kind`.
    pub async fn recv_type(&mut self, kind: &str, timeout: Duration) -> Result<Value, WsError> {
        self.recv_until(timeout, |frame| frame["type"] == kind)
            .await
    }

    /// Waits for the server to close the connection, skipping frames, and
    /// returns its close code (`None`: closed without a close frame).
    pub async fn recv_close(&mut self, timeout: Duration) -> Result<Option<u16>, WsError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv_before(deadline, timeout).await {
                Ok(_) | Err(WsError::NotJson(_)) => continue,
                Err(WsError::Closed { code, .. }) => return Ok(code),
                Err(other) => return Err(other),
            }
        }
    }

    /// Closes the connection from this side (code 1000).
    pub async fn close(mut self) -> Result<(), WsError> {
        match self.stream.close(None).await {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn recv_before(
        &mut self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Value, WsError> {
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .map_err(|_| WsError::Timeout(timeout))?;
            match next {
                None => {
                    return Err(WsError::Closed {
                        code: None,
                        reason: String::new(),
                    });
                }
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                )) => {
                    return Err(WsError::Closed {
                        code: None,
                        reason: String::new(),
                    });
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(text.as_str())
                        .map_err(|_| WsError::NotJson(text.to_string()));
                }
                Some(Ok(Message::Binary(bytes))) => {
                    return Err(WsError::NotJson(format!(
                        "binary frame of {} bytes",
                        bytes.len()
                    )));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(WsError::Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    });
                }
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            }
        }
    }
}

/// The HTTP status of a WebSocket upgrade with `token` (as the query
/// parameter; `None`: no credentials at all): 101 when it is accepted.
pub async fn upgrade_status(ws_url: &str, token: Option<&str>) -> Result<u16, WsError> {
    let url = match token {
        Some(token) => format!("{ws_url}?token={token}"),
        None => ws_url.to_owned(),
    };
    match tokio_tungstenite::connect_async(url).await {
        Ok((mut stream, response)) => {
            let _ = stream.close(Some(close_frame())).await;
            Ok(response.status().as_u16())
        }
        Err(tungstenite::Error::Http(response)) => Ok(response.status().as_u16()),
        Err(e) => Err(e.into()),
    }
}

fn close_frame() -> tungstenite::protocol::CloseFrame {
    tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }
}
