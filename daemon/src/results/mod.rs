//! The DICOM result objects of a study result: a Comprehensive SR with the findings
//! ([`sr`]) in its own series, with UIDs derived from the report id ([`uids`]). They are
//! stored and indexed exactly like received instances, so the Q/R SCP serves them and the
//! outbox pushes them to PACS.

pub mod sr;
pub mod uids;

use crate::model::InstanceRecord;
use crate::store::{header, Store, StoreError};
use dicom_object::{FileDicomObject, InMemDicomObject};

/// The AE title recorded as the source of objects this box generates.
pub const SOURCE_AE: &str = "DULI";

/// Errors building or storing a result object.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// The object could not be assembled or encoded.
    #[error("cannot build the result object: {0}")]
    Build(String),
    /// Writing it failed.
    #[error("cannot write the result object: {0}")]
    Io(#[from] std::io::Error),
    /// The written object does not read back.
    #[error("the result object does not read back: {0}")]
    Header(#[from] header::HeaderError),
    /// The store refused it.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes `obj` as a Part 10 file into the store and indexes it (durable after the store's
/// next flush). Blocking: call from a blocking context.
pub fn store_object(
    store: &Store,
    obj: &FileDicomObject<InMemDicomObject>,
) -> Result<InstanceRecord, ResultsError> {
    let mut bytes = Vec::with_capacity(64 * 1024);
    obj.write_all(&mut bytes)
        .map_err(|e| ResultsError::Build(e.to_string()))?;
    let mut file = store.files().incoming()?;
    file.write(&bytes)?;
    let staged = file.finish()?;
    let header = header::read_header(staged.path())?;
    Ok(store.place_and_commit(staged, &header, SOURCE_AE)?)
}
