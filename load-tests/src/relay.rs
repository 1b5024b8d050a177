//! The bare relay: the least a WebSocket server can do for the benchmark's
//! traffic, to show what this machine can carry at all. A client connects
//! to `/ROOM`; every text frame it sends goes unchanged to every other
//! client of that room, and frames beginning with `o` (ops) to the sender
//! too. No parsing, no ids, no storage, no limits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

type Members = Vec<(u64, mpsc::UnboundedSender<Message>)>;

#[derive(Default)]
struct Rooms {
    rooms: Mutex<HashMap<String, Members>>,
}

impl Rooms {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Members>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serves the relay on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) -> Result<()> {
    let rooms = Arc::new(Rooms::default());
    let mut next_id = 0u64;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: keep serving the others.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let _ = connection(stream, id, rooms).await;
        });
    }
}

/// Binds `addr` and serves; prints the address it listens on.
pub async fn run(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("listening on ws://{}", listener.local_addr()?);
    serve(listener).await
}

// The handshake callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn connection(stream: tokio::net::TcpStream, id: u64, rooms: Arc<Rooms>) -> Result<()> {
    let mut room = String::new();
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        |req: &Request, resp: Response| {
            room = req.uri().path().trim_start_matches('/').to_owned();
            Ok(resp)
        },
        Some(crate::worker::ws_config()),
    )
    .await?;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    rooms.lock().entry(room.clone()).or_default().push((id, tx));
    // Writes whatever is queued, one flush per batch.
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(first).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let echo = text.as_bytes().first() == Some(&b'o');
        let message = Message::Text(text);
        let rooms = rooms.lock();
        for (member, tx) in rooms.get(&room).into_iter().flatten() {
            if *member != id || echo {
                let _ = tx.send(message.clone());
            }
        }
    }
    {
        let mut rooms = rooms.lock();
        if let Some(members) = rooms.get_mut(&room) {
            members.retain(|(member, _)| *member != id);
            if members.is_empty() {
                rooms.remove(&room);
            }
        }
    }
    writer.abort();
    Ok(())
}
