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

/// Who sent a request, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `cli:USER`: the user the command runs as (the daemon reads it from the socket's
    /// peer credentials; the command line, running the request itself, also honours
    /// `SUDO_USER`).
    pub actor: String,
    /// The process, when known (`pid N`).
    pub process: Option<u32>,
}

impl Caller {
    /// This process: the command line running a request on the store itself.
    pub fn this_process() -> Caller {
        Caller {
            actor: crate::cli_audit::actor(),
            process: Some(std::process::id()),
        }
    }

    /// The peer of the control socket with user id `uid` and process id `pid`.
    pub fn peer(uid: u32, pid: Option<i32>) -> Caller {
        let actor = match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
            Ok(Some(u)) => format!("cli:{}", u.name),
            _ => format!("cli:uid{uid}"),
        };
        Caller {
            actor,
            process: pid.and_then(|p| u32::try_from(p).ok()),
        }
    }

    /// An event by this caller, from `local`, its process named in the detail.
    fn event(&self, action: Action, object: &str, detail: String) -> Event {
        let detail = match self.process {
            Some(pid) => format!("{detail} (duli command, pid {pid})"),
            None => format!("{detail} (duli command)"),
        };
        Event::new(&self.actor, action, object)
            .from("local")
            .detail(detail)
    }
}

fn user_add(
    store: &Store,
    audit: &Audit,
    caller: &Caller,
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
    audit.append(caller.event(
        Action::UserChange,
        name,
        format!("created with role {role}"),
    ))?;
    store.flush_blocking()?;
    Ok(Answer::UserAdded(UserAdded {
        created: name.to_string(),
        role,
    }))
}

/// Runs a request of `caller` against an open store and its audit trail (in the daemon,
/// or in the CLI when no daemon runs). The daemon passes its one shared [`Audit`] handle
/// so that appended records keep the chain, and its own `outbox` so a retry wakes its
/// workers; without one the outbox is opened here.
pub fn execute(
    store: &Store,
    audit: &Audit,
    outbox: Option<&Outbox>,
    caller: &Caller,
    req: &Request,
) -> Response {
    match answer(store, audit, outbox, caller, req) {
        Ok(answer) => Response::answer(answer),
        Err(e) => Response::error(e),
    }
}

/// The typed answer of a request. Reads of patient data (the studies, their instances,
/// an outbox listing that carries a peer's words) are audited as the console's are, the
/// record written before the answer is given.
pub fn answer(
    store: &Store,
    audit: &Audit,
    outbox: Option<&Outbox>,
    caller: &Caller,
    req: &Request,
) -> Result<Answer, ExecError> {
    Ok(match req {
        Request::OutboxList { dest } => with_outbox(store, outbox, |o| {
            let dest = dest.as_deref().map(str::parse::<Destination>).transpose()?;
            let entries = o.list(dest.as_ref())?;
            let with_words = entries.iter().filter(|e| e.peer_text.is_some()).count();
            if with_words > 0 {
                audit.append(caller.event(
                    Action::View,
                    "outbox",
                    format!(
                        "listed {} entries, {with_words} with a peer's words with its refusal",
                        entries.len()
                    ),
                ))?;
            }
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
        } => user_add(store, audit, caller, name, *role, password_hash)?,
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
        Request::Studies => {
            let studies = store.studies()?;
            audit.append(caller.event(
                Action::Query,
                "studies",
                format!("listed {} studies", studies.len()),
            ))?;
            Answer::Studies(studies)
        }
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
            for uid in &uids {
                all.extend(store.instances_of(uid)?);
            }
            // One study is named (and its patient with it); a listing of every study is
            // a query over all of them.
            let (action, object) = match study {
                Some(uid) => (Action::View, uid.as_str()),
                None => (Action::Query, "studies"),
            };
            audit.append(caller.event(
                action,
                object,
                format!("listed {} instances of {} studies", all.len(), uids.len()),
            ))?;
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
                            match answer(store, audit, None, &Caller::this_process(), &req) {
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

    /// Listing the studies or a study's instances is audited with who asked and the
    /// patients concerned, as the console's reads are; an outbox listing only when it
    /// carries a peer's words.
    #[test]
    fn reads_of_patient_data_are_audited_with_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let instance = crate::model::InstanceRecord {
            sop_instance_uid: "1.2.3.1".into(),
            study_instance_uid: "1.2.3".into(),
            ..Default::default()
        };
        let attrs = crate::model::StudyRecord {
            patient_id: "PAT-1".into(),
            ..Default::default()
        };
        store.commit_instance(&instance, &attrs).unwrap();
        let audit = Audit::open(&store).unwrap();
        let caller = Caller {
            actor: "cli:tech".into(),
            process: Some(42),
        };
        let run = |req: Request| answer(&store, &audit, None, &caller, &req).unwrap();
        assert!(matches!(run(Request::Studies), Answer::Studies(s) if s.len() == 1));
        let one = Request::Instances {
            study: Some("1.2.3".into()),
        };
        assert!(matches!(run(one), Answer::Instances(i) if i.len() == 1));
        assert!(matches!(
            run(Request::Instances { study: None }),
            Answer::Instances(i) if i.len() == 1
        ));
        run(Request::OutboxList { dest: None });
        let outbox = store.outbox(OutboxLimits::default()).unwrap();
        let new = crate::store::outbox::NewEntry {
            dest: Destination::Hl7,
            kind: crate::store::outbox::Kind::Report,
            report_id: "r-1".into(),
            study_instance_uid: "1.2.3".into(),
            payload: crate::store::outbox::Payload::Hl7 {
                message: "MSH|^~\\&|DULI\r".into(),
            },
        };
        outbox.enqueue(&[new]).unwrap();
        let entry = outbox.head(&Destination::Hl7).unwrap().unwrap();
        let backoff = crate::store::outbox::Backoff::default();
        outbox
            .mark_rejected(
                &entry,
                "AE",
                Some("patient PAT-1 SMITH not found"),
                5,
                &backoff,
            )
            .unwrap();
        let listed = answer(
            &store,
            &audit,
            Some(&outbox),
            &caller,
            &Request::OutboxList { dest: None },
        );
        assert!(matches!(listed, Ok(Answer::OutboxListed(l)) if l.entries == 1));
        let records = audit.records(0, 10).unwrap();
        let seen: Vec<(Action, &str, &str, Vec<String>)> = records
            .iter()
            .map(|r| {
                assert_eq!(r.source, "local");
                assert!(r.detail.ends_with("(duli command, pid 42)"), "{}", r.detail);
                (
                    r.action.clone(),
                    r.actor.as_str(),
                    r.object.as_str(),
                    r.patients.clone(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (Action::Query, "cli:tech", "studies", vec![]),
                (Action::View, "cli:tech", "1.2.3", vec!["PAT-1".to_string()]),
                (Action::Query, "cli:tech", "studies", vec![]),
                (Action::View, "cli:tech", "outbox", vec![]),
            ],
            "an empty outbox listing names no patient data; one with a peer's words does"
        );
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
            let err = answer(&store, &audit, None, &Caller::this_process(), &req).unwrap_err();
            assert!(
                matches!(err, ExecError::Account(UserError::BadHash(_))),
                "{err}"
            );
        }
        assert!(Users::open(&store).unwrap().get("weak").unwrap().is_none());
    }
}
