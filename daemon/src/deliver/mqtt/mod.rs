//! MQTT to the cloud backend: topic names ([`topics`]), the JSON payloads with their
//! pseudonymisation ([`payload`], schema in `docs/mqtt-report.schema.json`), and the
//! rumqttc channel ([`client`]).

pub mod client;
pub mod payload;
pub mod topics;
