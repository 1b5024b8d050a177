//! A WebSocket client of the JSON protocol, for tests: every read has a
//! deadline.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
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

    /// Connects as a browser at `origin` would (its `Origin` header), and
    /// from the local address `source` (any loopback address on Linux);
    /// `None`s: no `Origin`, the system's choice of address.
    pub async fn connect_from(
        ws_url: &str,
        token: &str,
        origin: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<WsClient, WsError> {
        let mut request = format!("{ws_url}?token={token}").into_client_request()?;
        if let Some(origin) = origin {
            let value = HeaderValue::from_str(origin)
                .map_err(|e| WsError::Ws(tungstenite::Error::HttpFormat(e.into())))?;
            request.headers_mut().insert("origin", value);
        }
        let stream = tcp_from(ws_url, source).await?;
        match tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await {
            Ok((stream, _)) => Ok(WsClient { stream }),
            Err(tungstenite::Error::Http(response)) => {
                Err(WsError::Rejected(response.status().as_u16()))
            }
            Err(e) => Err(e.into()),
        }
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

/// A TCP connection to the host of `ws_url` (`ws://IP:PORT/...`), from
/// `source` if given.
async fn tcp_from(ws_url: &str, source: Option<IpAddr>) -> Result<TcpStream, WsError> {
    let io = |e: std::io::Error| WsError::Ws(tungstenite::Error::Io(e));
    let authority = ws_url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default();
    let addr: SocketAddr = authority.parse().map_err(|_| {
        io(std::io::Error::other(format!(
            "not an IP address and port: {authority}"
        )))
    })?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(io)?;
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0)).map_err(io)?;
    }
    socket.connect(addr).await.map_err(io)
}

/// An upgrade that the server is expected to refuse: its HTTP status and
/// JSON body (`Null` if the body is not JSON). The request is a WebSocket
/// upgrade with `token`, `origin` as its `Origin` header and `source` as
/// the local address, as in [`WsClient::connect_from`]; a 101 is an error.
pub async fn upgrade_refusal(
    ws_url: &str,
    token: &str,
    origin: Option<&str>,
    source: Option<IpAddr>,
) -> Result<(u16, Value), WsError> {
    let io = |e: std::io::Error| WsError::Ws(tungstenite::Error::Io(e));
    let mut stream = tcp_from(ws_url, source).await?;
    let rest = ws_url.trim_start_matches("ws://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut request = format!(
        "GET /{path}?token={token} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    if let Some(origin) = origin {
        request.push_str(&format!("Origin: {origin}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let timeout = Duration::from_secs(10);
    let mut buf = Vec::new();
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    return Ok::<_, WsError>((head.to_owned(), body.to_owned()));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.map_err(io)?;
            if n == 0 {
                return Err(WsError::Closed {
                    code: None,
                    reason: "connection closed before the whole answer".into(),
                });
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let (head, body) = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| WsError::Timeout(timeout))??;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status == 101 {
        return Err(WsError::NotJson("the upgrade was accepted".into()));
    }
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

fn close_frame() -> tungstenite::protocol::CloseFrame {
    tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }
}
