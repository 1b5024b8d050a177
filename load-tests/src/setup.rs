//! Tokens and rooms: what a target needs before clients can join.

use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;

use crate::scenario::Scenario;
use crate::target::{Auth, Target, TargetKind};

/// Rooms being created at once.
const CREATE_CONCURRENCY: usize = 16;

/// The name of room `room` of run `run_id`: a valid room id and channel
/// name on every target.
pub fn room_name(run_id: &str, room: u32) -> String {
    format!("{run_id}-{room}")
}

/// The user id of sender number `me`.
pub fn user_id(me: u32) -> String {
    format!("u{me}")
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

/// An HS256 JWT for `user`, valid for a day: what `collab token` and
/// Centrifugo's connection tokens both accept.
pub fn mint(secret: &str, user: &str) -> Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 24 * 3600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub: user, exp },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?;
    Ok(token)
}

/// Gets tokens and creates rooms for one target.
#[derive(Clone)]
pub struct Setup {
    target: Target,
    http: reqwest::Client,
}

impl Setup {
    pub fn new(target: &Target) -> Result<Setup> {
        Ok(Setup {
            target: target.clone(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(CREATE_CONCURRENCY)
                .build()?,
        })
    }

    fn http_url(&self) -> Result<&str> {
        self.target
            .http_url
            .as_deref()
            .context("this target needs an HTTP URL")
    }

    /// A token for sender `me` (`None` for targets without tokens).
    pub async fn token(&self, me: u32) -> Result<Option<String>> {
        let user = user_id(me);
        match &self.target.auth {
            Auth::Secret(secret) => Ok(Some(mint(secret, &user)?)),
            Auth::None => Ok(None),
            Auth::DevToken => {
                let response = self
                    .http
                    .post(format!("{}/v1/dev/token", self.http_url()?))
                    .json(&json!({ "user": user }))
                    .send()
                    .await?;
                let status = response.status();
                let body: serde_json::Value = response.json().await?;
                match body["token"].as_str() {
                    Some(token) if status.is_success() => Ok(Some(token.to_owned())),
                    _ => bail!("dev token: {status} {body}"),
                }
            }
        }
    }

    /// Creates the rooms `rooms` of a run on a collab target, each by its
    /// first member (room creation is rate-limited per user). A room that
    /// exists already is fine.
    pub async fn create_rooms(
        &self,
        run_id: &str,
        rooms: Range<u32>,
        scenario: &Scenario,
    ) -> Result<()> {
        if self.target.kind != TargetKind::Collab {
            return Ok(());
        }
        let (_, users) = scenario.shape();
        let kind = if scenario.boards() {
            "board"
        } else {
            "channel"
        };
        let results: Vec<Result<()>> = futures_util::stream::iter(rooms)
            .map(|room| async move {
                let token = self.token(room * users).await?.unwrap_or_default();
                self.create_room(&token, &room_name(run_id, room), kind)
                    .await
            })
            .buffer_unordered(CREATE_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// `POST /v1/rooms`; 201 or 409 (exists) are fine.
    pub async fn create_room(&self, token: &str, id: &str, kind: &str) -> Result<()> {
        let response = self
            .http
            .post(format!("{}/v1/rooms", self.http_url()?))
            .bearer_auth(token)
            .json(&json!({ "kind": kind, "id": id }))
            .send()
            .await?;
        match response.status().as_u16() {
            201 | 409 => Ok(()),
            status => bail!(
                "creating room {id}: HTTP {status} {}",
                response.text().await.unwrap_or_default()
            ),
        }
    }
}
