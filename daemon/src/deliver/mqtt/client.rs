//! The MQTT channel: publishes outbox entries to the cloud broker with rumqttc, QoS 1,
//! a persistent session (`clean_session = false`, stable client id), a retained `online`
//! status and an `offline` last will, over TLS with a client certificate (rustls, ring).
//!
//! rumqttc keeps unacknowledged publishes only in memory and hands out no packet ids, so
//! the outbox stays the source of truth: the channel publishes one entry at a time, learns
//! its packet id from the event loop's `Outgoing::Publish`, and reports `Acked` only on the
//! `PubAck` carrying that id. Any connection error drops the whole rumqttc event loop (so it
//! cannot replay stale publishes) and the entry is retried by the outbox.
//!
//! A PUBLISH may be up to [`MAX_PACKET_BYTES`]. An entry that can never be sent (larger than
//! that, or a topic MQTT does not allow) is a refusal ([`Delivery::Rejected`]): counted
//! towards the destination's dead-letter rule like a peer's refusal, so it cannot hold
//! back the entries queued after it.

use super::topics::Topics;
use crate::config::Config;
use crate::deliver::{Channel, Delivery, Refusal};
use crate::site_secret::SiteSecret;
use crate::store::outbox::{Entry, Payload};
use crate::tls::{client_config, TlsError};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Outgoing,
    Packet, QoS, TlsConfiguration, Transport,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Status payload while connected.
pub const ONLINE: &str = "online";
/// Status payload after a clean stop, and the last will.
pub const OFFLINE: &str = "offline";

/// Largest MQTT packet the channel sends (256 KiB, fixed header included). A report with
/// every field at its bound (at most 16 modalities of 16 characters, the model's findings)
/// is a few KiB; rumqttc's own default (10 KiB) would refuse a report with many findings.
pub const MAX_PACKET_BYTES: usize = 256 * 1024;

/// Largest packet the channel accepts from the broker (CONNACK, PUBACK, PINGRESP: a few
/// bytes each; nothing is subscribed).
const MAX_INCOMING_BYTES: usize = 10 * 1024;

/// Events of the MQTT event loop waiting to be read by the channel, at most.
const EVENT_QUEUE: usize = 64;

/// Size on the wire of a QoS 1 PUBLISH of `body` on `topic`: fixed header (one byte and a
/// remaining length of up to four), topic length and text, packet id, payload.
pub fn publish_packet_size(topic: &str, body: &[u8]) -> usize {
    let remaining = 2 + topic.len() + 2 + body.len();
    let len_len = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + len_len + remaining
}

/// Why `body` can never be published on `topic` by this channel, if it cannot.
pub fn unsendable(topic: &str, body: &[u8]) -> Option<String> {
    if topic.is_empty() || topic.contains(['+', '#', '\0']) || topic.len() > usize::from(u16::MAX) {
        return Some(format!("topic {topic:?} is not a valid MQTT topic name"));
    }
    let size = publish_packet_size(topic, body);
    (size > MAX_PACKET_BYTES).then(|| {
        format!("message of {size} bytes exceeds the MQTT packet limit of {MAX_PACKET_BYTES} bytes")
    })
}

/// Where and how to reach the broker.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Stable client id (the persistent session's name).
    pub client_id: String,
    /// TLS client configuration; `None` for plain TCP (`[mqtt] tls = false`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The device's topics.
    pub topics: Topics,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Time allowed to connect (TCP, TLS and CONNACK).
    pub connect_timeout: Duration,
    /// Time allowed for a PubAck.
    pub ack_timeout: Duration,
    /// Reconnection delay bounds while idle.
    pub reconnect_min: Duration,
    /// Largest reconnection delay while idle.
    pub reconnect_max: Duration,
}

impl MqttSettings {
    /// Settings from `[mqtt]` and `[device]`: TLS with `ca`, `cert` and `key` unless
    /// `tls = false`.
    pub fn from_config(cfg: &Config) -> Result<MqttSettings, TlsError> {
        let m = &cfg.mqtt;
        let tls = if m.tls {
            Some(client_config(
                "mqtt",
                m.ca.as_deref(),
                m.cert.as_deref(),
                m.key.as_deref(),
            )?)
        } else {
            None
        };
        Ok(MqttSettings {
            host: m.host.clone(),
            port: m.port,
            client_id: cfg.mqtt_client_id(),
            tls,
            topics: Topics::new(&cfg.device.site_id, &cfg.device.device_id),
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(20),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
        })
    }
}

/// Why the channel could not connect or publish (the connection is then dropped).
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The client did not take the publish.
    #[error("publish: {0}")]
    Publish(#[from] rumqttc::ClientError),
    /// No PubAck came in time.
    #[error("no PubAck within the timeout")]
    NoPubAck,
    /// No CONNACK came in time.
    #[error("no CONNACK within the timeout")]
    NoConnack,
    /// The event loop has ended.
    #[error("MQTT event loop stopped")]
    Stopped,
    /// The connection failed while connecting.
    #[error("connect to {host}:{port}: {source}")]
    Connect {
        /// Broker host.
        host: String,
        /// Broker port.
        port: u16,
        /// The event loop's error.
        source: ConnectionError,
    },
    /// The broker refused the connection.
    #[error("broker refused the connection: {0:?}")]
    Refused(ConnectReturnCode),
    /// The connection failed once established.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The publish went out and the connection ended, or the timeout passed, before its
    /// PubAck (a broker that disconnects a client on a publish it will not take).
    #[error("published, then {0}")]
    Unanswered(Box<MqttError>),
}

impl MqttError {
    /// This error as it ends a wait for the PubAck of a publish whose packet id is `pkid`
    /// when seen: [`MqttError::Unanswered`] once the publish went out (unless the message
    /// itself could not be encoded).
    fn after_publish(self, pkid: Option<u16>) -> MqttError {
        match pkid {
            Some(_) if !self.is_unsendable() => MqttError::Unanswered(Box::new(self)),
            _ => self,
        }
    }

    /// Whether the error is about the message itself, which no retry can send (the
    /// client refused to encode it), rather than about the connection.
    pub fn is_unsendable(&self) -> bool {
        use rumqttc::{mqttbytes::Error as Encode, StateError};
        matches!(
            self,
            MqttError::Connection(ConnectionError::MqttState(StateError::Deserialization(
                Encode::OutgoingPacketTooLarge { .. } | Encode::PayloadTooLong
            )))
        )
    }
}

/// One live rumqttc client with its event loop running in a task.
struct Connection {
    client: AsyncClient,
    events: mpsc::Receiver<Result<Event, ConnectionError>>,
    task: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Connection {
    /// Publishes at QoS 1 and waits for the PubAck of this very publish.
    async fn publish_acked(
        &mut self,
        topic: &str,
        body: &[u8],
        retain: bool,
        timeout: Duration,
    ) -> Result<(), MqttError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, body.to_vec())
            .await?;
        let deadline = Instant::now() + timeout;
        let mut pkid = None;
        loop {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(event))) => event,
                Ok(Some(Err(e))) => return Err(MqttError::Connection(e).after_publish(pkid)),
                Ok(None) => return Err(MqttError::Stopped.after_publish(pkid)),
                Err(_) => return Err(MqttError::NoPubAck.after_publish(pkid)),
            };
            match event {
                // QoS 0 publishes (health) carry id 0 and are never ours
                Event::Outgoing(Outgoing::Publish(id)) if pkid.is_none() && id != 0 => {
                    pkid = Some(id)
                }
                Event::Incoming(Packet::PubAck(ack)) if Some(ack.pkid) == pkid => return Ok(()),
                _ => {}
            }
        }
    }
}

/// The MQTT channel.
pub struct MqttChannel {
    settings: MqttSettings,
    secret: Arc<SiteSecret>,
    conn: Option<Connection>,
    health: Option<watch::Receiver<String>>,
    reconnect_at: Instant,
    failures: u32,
    /// When the connection in hand was made: the pause between reconnections starts short
    /// again only once one lived [`STABLE`].
    connected_at: Option<Instant>,
}

/// How long a connection must live for the pause between reconnections to start short
/// again: a broker that accepts and then drops at once (two boxes with one client id
/// taking the session from each other, an ACL refusal) meets growing pauses.
pub const STABLE: Duration = Duration::from_secs(60);

impl std::fmt::Debug for MqttChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttChannel")
            .field(
                "broker",
                &format!("{}:{}", self.settings.host, self.settings.port),
            )
            .field("client_id", &self.settings.client_id)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl MqttChannel {
    /// A channel with `settings`; it connects when idle or on the first delivery. `secret`
    /// keys the report ids of entries queued before they were keyed
    /// ([`super::payload::current_body`]).
    pub fn new(settings: MqttSettings, secret: Arc<SiteSecret>) -> MqttChannel {
        MqttChannel {
            settings,
            secret,
            conn: None,
            health: None,
            reconnect_at: Instant::now(),
            failures: 0,
            connected_at: None,
        }
    }

    /// Publishes each new value of `health` (JSON) on the health topic at QoS 0 while
    /// connected: health is a sample, not a record, so it never enters the outbox.
    pub fn with_health(mut self, health: watch::Receiver<String>) -> MqttChannel {
        self.health = Some(health);
        self
    }

    async fn connect(&self) -> Result<Connection, MqttError> {
        let s = &self.settings;
        let mut opts = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
        opts.set_clean_session(false)
            .set_keep_alive(s.keep_alive)
            .set_max_packet_size(MAX_INCOMING_BYTES, MAX_PACKET_BYTES)
            .set_last_will(LastWill::new(
                s.topics.status(),
                OFFLINE,
                QoS::AtLeastOnce,
                true,
            ));
        if let Some(tls) = &s.tls {
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        let mut net = eventloop.network_options();
        net.set_connection_timeout(s.connect_timeout.as_secs().max(1));
        eventloop.set_network_options(net);
        // Bounded: a broker sending packets faster than the channel reads its events (a
        // flood of unsolicited PUBLISHes) stalls its own event loop, never our memory.
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(ev) => {
                        if tx.send(Ok(ev)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                }
            }
        });
        let mut conn = Connection {
            client,
            events,
            task,
        };
        let deadline = Instant::now() + s.connect_timeout + Duration::from_secs(1);
        loop {
            let ev = tokio::time::timeout_at(deadline, conn.events.recv())
                .await
                .map_err(|_| MqttError::NoConnack)?
                .ok_or(MqttError::Stopped)?;
            let ev = ev.map_err(|source| MqttError::Connect {
                host: s.host.clone(),
                port: s.port,
                source,
            })?;
            match ev {
                Event::Incoming(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
                    break
                }
                Event::Incoming(Packet::ConnAck(ack)) => return Err(MqttError::Refused(ack.code)),
                _ => {}
            }
        }
        conn.publish_acked(&s.topics.status(), ONLINE.as_bytes(), true, s.ack_timeout)
            .await?;
        log::info!(
            "mqtt: connected to {}:{} as {}",
            s.host,
            s.port,
            s.client_id
        );
        Ok(conn)
    }

    /// Takes a new connection into use.
    fn connected(&mut self, conn: Connection) {
        self.conn = Some(conn);
        self.connected_at = Some(Instant::now());
    }

    fn lost(&mut self, why: &dyn std::fmt::Display) {
        let lived = self.connected_at.take().map(|at| at.elapsed());
        if self.conn.take().is_some() {
            match lived {
                Some(l) if l < STABLE => log::warn!(
                    "mqtt: connection lost after {} s: {why} (a broker that drops a client \
                     soon after accepting it may be giving its client id to another one, \
                     or refusing a topic)",
                    l.as_secs()
                ),
                _ => log::warn!("mqtt: connection lost: {why}"),
            }
        }
        if lived.is_some_and(|l| l >= STABLE) {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        let exp = self.failures.min(16) - 1;
        let delay = self
            .settings
            .reconnect_min
            .saturating_mul(1 << exp)
            .min(self.settings.reconnect_max);
        self.reconnect_at = Instant::now() + delay;
    }
}

impl Channel for MqttChannel {
    async fn deliver(&mut self, entry: &Entry) -> Delivery {
        let Payload::Mqtt {
            topic,
            body,
            retain,
        } = &entry.payload
        else {
            return Delivery::Rejected(Refusal::ours("entry is not an MQTT publication"));
        };
        let body = super::payload::current_body(body, &entry.report_id, &self.secret);
        if let Some(why) = unsendable(topic, body.as_bytes()) {
            return Delivery::Rejected(Refusal::ours(format!("cannot be sent: {why}")));
        }
        // a connection that died while nobody listened is replaced before publishing
        if let Some(conn) = self.conn.as_mut() {
            loop {
                match conn.events.try_recv() {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => self.lost(&format!("stale connection: {e}")),
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.lost(&"event loop stopped")
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
                break;
            }
        }
        if self.conn.is_none() {
            match self.connect().await {
                Ok(c) => self.connected(c),
                Err(e) => {
                    self.lost(&e);
                    return Delivery::Failed(e.to_string());
                }
            }
        }
        let timeout = self.settings.ack_timeout;
        let Some(conn) = self.conn.as_mut() else {
            return Delivery::Failed("not connected".into());
        };
        match conn
            .publish_acked(topic, body.as_bytes(), *retain, timeout)
            .await
        {
            Ok(()) => Delivery::Acked,
            Err(e) if e.is_unsendable() => {
                // the event loop ended with the encode error: a fresh connection next time
                self.conn = None;
                Delivery::Rejected(Refusal::ours(format!("cannot be sent: {e}")))
            }
            Err(e @ MqttError::Unanswered(_)) => {
                self.lost(&e);
                Delivery::Dropped(e.to_string())
            }
            Err(e) => {
                self.lost(&e);
                Delivery::Failed(e.to_string())
            }
        }
    }

    async fn idle(&mut self) {
        loop {
            if self.conn.is_none() {
                tokio::time::sleep_until(self.reconnect_at).await;
                match self.connect().await {
                    Ok(c) => self.connected(c),
                    Err(e) => {
                        log::debug!("mqtt: {e}");
                        self.lost(&e);
                        continue;
                    }
                }
            }
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            let health = &mut self.health;
            let health_changed = async move {
                match health.as_mut() {
                    Some(h) => h.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = conn.events.recv() => match ev {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => self.lost(&e),
                    None => self.lost(&"event loop stopped"),
                },
                alive = health_changed => {
                    if !alive {
                        self.health = None;
                    } else if let (Some(h), Some(conn)) = (self.health.as_ref(), self.conn.as_ref()) {
                        let body = h.borrow().clone();
                        if let Err(e) = conn
                            .client
                            .try_publish(self.settings.topics.health(), QoS::AtMostOnce, false, body)
                        {
                            log::debug!("mqtt: health not published: {e}");
                        }
                    }
                }
            }
        }
    }

    async fn close(&mut self) {
        let timeout = self.settings.ack_timeout.min(Duration::from_secs(5));
        let status = self.settings.topics.status();
        if let Some(mut conn) = self.conn.take() {
            if let Err(e) = conn
                .publish_acked(&status, OFFLINE.as_bytes(), true, timeout)
                .await
            {
                log::debug!("mqtt: offline status not published: {e}");
            }
            let _ = conn.client.disconnect().await;
            // let the event loop write the DISCONNECT before the task is aborted
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while let Some(Ok(ev)) = conn.events.recv().await {
                    if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(site: &str, device: &str) -> Config {
        let mut c = Config::default();
        c.device.site_id = site.into();
        c.device.device_id = device.into();
        c
    }

    /// Two sites on one broker with the same device id keep sessions of their own: the
    /// default client id names the site too, within the 23 bytes MQTT 3.1.1 servers must
    /// accept, and a configured one is used as it is.
    #[test]
    fn the_default_client_id_names_the_site_and_fits_23_bytes() {
        let a = config("hospital-a", "edge-01").mqtt_client_id();
        let b = config("hospital-b", "edge-01").mqtt_client_id();
        assert_ne!(a, b);
        assert_eq!(a, config("hospital-a", "edge-01").mqtt_client_id());
        assert_eq!(config("h1", "e1").mqtt_client_id(), "duli-h1-e1");
        let long_a = config("general-hospital-north", "duli-edge-01").mqtt_client_id();
        let long_b = config("general-hospital-south", "duli-edge-01").mqtt_client_id();
        assert_ne!(long_a, long_b);
        for id in [&a, &b, &long_a, &long_b] {
            assert!((1..=23).contains(&id.len()), "{id}");
            assert!(id.starts_with("duli-"), "{id}");
        }
        let defaults = Config::default();
        assert!(defaults.mqtt_client_id().len() <= 23);
        let mut own = config("hospital-a", "edge-01");
        own.mqtt.client_id = Some("ris-gateway-7".into());
        assert_eq!(own.mqtt_client_id(), "ris-gateway-7");
    }

    /// The pause before the next connection grows while connections die young (a broker
    /// that accepts and drops at once), and starts short again after one that lived.
    #[test]
    fn short_lived_connections_do_not_reset_the_reconnect_pause() {
        let mut plain = Config::default();
        plain.mqtt.tls = false;
        let settings = MqttSettings::from_config(&plain).unwrap();
        let min = settings.reconnect_min;
        let mut ch = MqttChannel::new(settings, Arc::new(SiteSecret::from_bytes(&[1u8; 32])));
        let pause = |ch: &MqttChannel| ch.reconnect_at.saturating_duration_since(Instant::now());
        let mut before = Duration::ZERO;
        for _ in 0..4 {
            // Connected a moment ago, dropped at once.
            ch.connected_at = Some(Instant::now());
            ch.lost(&"dropped by the broker");
            let now = pause(&ch);
            assert!(now > before, "{now:?} after {before:?}");
            before = now;
        }
        assert!(before >= min * 7, "{before:?}");
        // A connection that lived: short again.
        ch.connected_at = Instant::now().checked_sub(STABLE + Duration::from_secs(1));
        ch.lost(&"dropped after a while");
        assert!(pause(&ch) <= min, "{:?}", pause(&ch));
    }
}
