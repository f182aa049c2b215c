//! Runs a control [`Request`] against an open store: in the daemon (its store, audit
//! handle and outbox) or in the command line when no daemon runs.

use super::protocol::{Answer, OutboxListing, Request, Requeued, Response, StoreStatus, UserAdded};
use crate::accounts::{CreateError, PasswordHash, Role, User, UserError, UserInfo, Users};
use crate::audit::{Action, Audit, Event, Head};
use crate::store::outbox::{
    Destination, Outbox, OutboxError, OutboxLimits, RetrySelector, SelectorError,
};
use crate::store::{Store, StoreError};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// A destination or selector names nothing known.
    #[error(transparent)]
    Selector(#[from] SelectorError),
    /// The account cannot be stored.
    #[error(transparent)]
    Account(#[from] UserError),
    /// The account exists already.
    #[error("user {0} exists (change it in the console's Users page)")]
    UserExists(String),
}

fn user_add(
    store: &Store,
    audit: &Audit,
    name: &str,
    role: Role,
    password_hash: &PasswordHash,
) -> Result<Answer, ExecError> {
    if !password_hash.is_ours() {
        return Err(ExecError::Account(UserError::BadHash(name.to_string())));
    }
    let users = Users::open(store)?;
    let user = User {
        name: name.to_string(),
        role,
        password: password_hash.clone(),
        created_ms: crate::clock::now_millis(),
        disabled: false,
    };
    users.create(&user).map_err(|e| match e {
        CreateError::Exists(name) => ExecError::UserExists(name),
        CreateError::User(e) => ExecError::Account(e),
    })?;
    audit.append(
        Event::new("local-cli", Action::UserChange, name)
            .from("local")
            .detail(format!("created with role {role}")),
    )?;
    store.flush_blocking()?;
    Ok(Answer::UserAdded(UserAdded {
        created: name.to_string(),
        role,
    }))
}

/// Runs a request against an open store and its audit trail (in the daemon, or in the CLI
/// when no daemon runs). The daemon passes its one shared [`Audit`] handle so that
/// appended records keep the chain, and its own `outbox` so a retry wakes its workers;
/// without one the outbox is opened here.
pub fn execute(store: &Store, audit: &Audit, outbox: Option<&Outbox>, req: &Request) -> Response {
    match answer(store, audit, outbox, req) {
        Ok(answer) => Response::answer(answer),
        Err(e) => Response::error(e),
    }
}

/// The typed answer of a request.
pub fn answer(
    store: &Store,
    audit: &Audit,
    outbox: Option<&Outbox>,
    req: &Request,
) -> Result<Answer, ExecError> {
    Ok(match req {
        Request::OutboxList { dest } => with_outbox(store, outbox, |o| {
            let dest = dest.as_deref().map(str::parse::<Destination>).transpose()?;
            let entries = o.list(dest.as_ref())?;
            Ok(Answer::OutboxListed(OutboxListing {
                table: crate::store::outbox::render_table(&entries, crate::clock::now_millis()),
                entries: entries.len(),
            }))
        })?,
        Request::OutboxRetry { selector } => with_outbox(store, outbox, |o| {
            let which = selector.parse::<RetrySelector>()?;
            Ok(Answer::Requeued(Requeued {
                requeued: o.retry(&which)?,
            }))
        })?,
        Request::UserAdd {
            name,
            role,
            password_hash,
        } => user_add(store, audit, name, *role, password_hash)?,
        Request::UserList => Answer::Users(
            Users::open(store)?
                .list()?
                .iter()
                .map(UserInfo::from)
                .collect(),
        ),
        Request::Reindex => Answer::Reindexed(store.reindex()?),
        Request::Status => Answer::Status(StoreStatus {
            instances: store.instance_count(),
            studies: store
                .study_state_counts()?
                .into_iter()
                .map(|(s, n)| (s.as_str().to_string(), n))
                .collect(),
            audit_forward: crate::audit_forward::status_of(audit),
            model: None,
        }),
        Request::Studies => Answer::Studies(store.studies()?),
        Request::AuditVerify => Answer::AuditVerified(audit.verify()?.into()),
        Request::AuditAppend(event) => {
            let rec = audit.append(event.clone())?;
            store.flush_blocking()?;
            Answer::AuditAppended(Head {
                seq: rec.seq,
                hash: rec.hash,
            })
        }
        Request::Instances { study } => {
            let uids = match study {
                Some(uid) => vec![uid.clone()],
                None => store
                    .studies()?
                    .into_iter()
                    .map(|s| s.study_instance_uid)
                    .collect(),
            };
            let mut all = Vec::new();
            for uid in uids {
                all.extend(store.instances_of(&uid)?);
            }
            Answer::Instances(all)
        }
    })
}

/// Runs `f` on the daemon's outbox, or on one opened here.
fn with_outbox(
    store: &Store,
    outbox: Option<&Outbox>,
    f: impl FnOnce(&Outbox) -> Result<Answer, ExecError>,
) -> Result<Answer, ExecError> {
    match outbox {
        Some(o) => f(o),
        None => f(&store.outbox(OutboxLimits::default())?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> PasswordHash {
        crate::accounts::users::test_hash(n)
    }

    /// Several `duli user add` of one name at once: exactly one creates the account, the
    /// others are told it exists, and the account keeps the winner's password.
    #[test]
    fn concurrent_adds_of_one_name_create_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::open(&store).unwrap();
        for round in 0..50u8 {
            let name = format!("tech{round}");
            let start = std::sync::Barrier::new(4);
            let results: Vec<(u8, bool)> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4u8)
                    .map(|i| {
                        let (store, audit, start, name) = (&store, &audit, &start, &name);
                        s.spawn(move || {
                            let req = Request::UserAdd {
                                name: name.clone(),
                                role: Role::Technician,
                                password_hash: hash(i),
                            };
                            start.wait();
                            match answer(store, audit, None, &req) {
                                Ok(_) => (i, true),
                                Err(ExecError::UserExists(_)) => (i, false),
                                Err(e) => panic!("{e}"),
                            }
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let winners: Vec<u8> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
            assert_eq!(winners.len(), 1, "round {round}: {results:?}");
            let user = Users::open(&store).unwrap().get(&name).unwrap().unwrap();
            assert_eq!(user.password, hash(winners[0]), "round {round}");
        }
    }

    /// A hash with other parameters than the product makes (one iteration: a weak
    /// credential; billions: a login that ties up a thread for hours) is not stored.
    #[test]
    fn a_user_with_a_hash_of_other_parameters_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::open(&store).unwrap();
        for iterations in [1, u32::MAX] {
            let req = Request::UserAdd {
                name: "weak".into(),
                role: Role::Admin,
                password_hash: PasswordHash {
                    iterations,
                    ..hash(3)
                },
            };
            let err = answer(&store, &audit, None, &req).unwrap_err();
            assert!(
                matches!(err, ExecError::Account(UserError::BadHash(_))),
                "{err}"
            );
        }
        assert!(Users::open(&store).unwrap().get("weak").unwrap().is_none());
    }
}
