//! Association negotiation as a pure function: an A-ASSOCIATE-RQ, the peer's address and
//! the SCP's policy in; an A-ASSOCIATE-AC with the accepted presentation contexts, or an
//! A-ASSOCIATE-RJ with the reason the standard prescribes, out.

use crate::config::{AllowedPeer, Permission};
use crate::dimse::uids;
use dicom_ul::pdu::{
    AssociationAC, AssociationRJ, AssociationRJResult, AssociationRJServiceProviderASCEReason,
    AssociationRJServiceProviderPresentationReason, AssociationRJServiceUserReason,
    AssociationRJSource, AssociationRQ, PresentationContextResult, PresentationContextResultReason,
    RequestorRoles, UserVariableItem,
};
use std::collections::HashSet;
use std::net::IpAddr;

/// The DICOM application context name.
pub const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
/// Our implementation class UID (under the 2.25 UUID arc).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.235116404853385516095640263962349632719";
/// Our implementation version name (at most 16 characters).
pub const IMPLEMENTATION_VERSION: &str = "DULI_EDGE_010";
/// Most presentation contexts one association may propose (ids are odd 1..=255).
pub const MAX_PRESENTATION_CONTEXTS: usize = 128;

/// What the SCP accepts.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Our AE title; the called AE title must match it.
    pub ae_title: String,
    /// Calling AE allow-list; empty accepts anyone with every permission.
    pub allowed_peers: Vec<AllowedPeer>,
    /// Abstract syntaxes offered, each with the permission it needs.
    pub abstract_syntaxes: Vec<(String, Permission)>,
    /// Accept any storage SOP class (needs the `store` permission).
    pub accept_any_storage: bool,
    /// Transfer syntaxes accepted for storage, in our preference order.
    pub transfer_syntaxes: Vec<String>,
    /// Our maximum P-DATA PDU length.
    pub max_pdu: u32,
    /// SOP classes for which the requestor may take the SCP role (C-GET sub-operations).
    pub scp_role_classes: Vec<String>,
}

/// One accepted presentation context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedContext {
    /// Presentation context id.
    pub id: u8,
    /// Abstract syntax (SOP class) UID.
    pub abstract_syntax: String,
    /// The transfer syntax chosen.
    pub transfer_syntax: String,
    /// Whether the peer holds the SCU role on this context, i.e. may send it requests:
    /// true unless SCP/SCU role selection for its SOP class left the peer the SCP role only
    /// (a storage context kept for the sub-operations of a C-GET).
    pub peer_scu: bool,
}

/// The result of a successful negotiation.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The A-ASSOCIATE-AC to send.
    pub ac: AssociationAC,
    /// The contexts that were accepted.
    pub contexts: Vec<AcceptedContext>,
    /// Calling AE title (trimmed).
    pub calling_ae: String,
    /// Largest P-DATA PDU the peer accepts (0 in the RQ = unlimited, capped here).
    pub peer_max_pdu: u32,
    /// Permissions the peer holds.
    pub permissions: HashSet<Permission>,
    /// SOP classes for which the peer accepted the SCP role (C-GET).
    pub peer_scp_classes: HashSet<String>,
}

/// The result of a refused negotiation.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// The A-ASSOCIATE-RJ to send.
    pub rj: AssociationRJ,
    /// A log line explaining why.
    pub reason: String,
    /// The calling AE is allowed, but only with another client certificate: an identity
    /// claim that failed, for the audit trail.
    pub identity_mismatch: bool,
}

fn reject(result: AssociationRJResult, source: AssociationRJSource, reason: String) -> Rejected {
    Rejected {
        rj: AssociationRJ { result, source },
        reason,
        identity_mismatch: false,
    }
}

/// Rejection when the association cap is reached: transient, local limit exceeded.
pub fn reject_busy(active: usize) -> Rejected {
    reject(
        AssociationRJResult::Transient,
        AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
        format!("association limit reached ({active} active)"),
    )
}

/// The rejection of an association over its address's share
/// (`dicom.max_associations_per_address`): transient, like the overall limit.
pub fn reject_busy_address(held: usize) -> Rejected {
    reject(
        AssociationRJResult::Transient,
        AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
        format!(
            "this address already holds {held} associations (dicom.max_associations_per_address)"
        ),
    )
}

/// Negotiates an association request that came without a client certificate (plain
/// DICOM) against `policy`.
pub fn negotiate(rq: &AssociationRQ, peer: IpAddr, policy: &Policy) -> Result<Accepted, Rejected> {
    negotiate_with_cert(rq, peer, None, policy)
}

/// Negotiates an association request against `policy`; `cert_sha256` is the SHA-256
/// (lower-case hex) of the peer's TLS client certificate, if it presented one. An
/// `allowed_peers` entry with `cert_sha256` matches only that certificate.
///
/// In order: the request's header (`check_header`), the calling peer's permissions
/// (`permissions_of`), the number of presentation contexts, the peer's user items
/// (`PeerItems`), the SCP/SCU roles granted (`granted_roles`), then each presentation
/// context (`answer_contexts`).
pub fn negotiate_with_cert(
    rq: &AssociationRQ,
    peer: IpAddr,
    cert_sha256: Option<&str>,
    policy: &Policy,
) -> Result<Accepted, Rejected> {
    check_header(rq, policy)?;
    let calling = rq.calling_ae_title.trim().to_string();
    let permissions = permissions_of(policy, &calling, peer, cert_sha256)?;
    if rq.presentation_contexts.is_empty()
        || rq.presentation_contexts.len() > MAX_PRESENTATION_CONTEXTS
    {
        return Err(reject(
            AssociationRJResult::Permanent,
            AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::NoReasonGiven),
            format!(
                "{} presentation contexts proposed (1 to {MAX_PRESENTATION_CONTEXTS} allowed)",
                rq.presentation_contexts.len()
            ),
        ));
    }
    let items = PeerItems::of(rq);
    let roles = granted_roles(&items.requested_roles, &permissions, policy);
    let (results, contexts) = answer_contexts(rq, policy, &permissions, &items, &roles);

    let mut user_variables = vec![
        UserVariableItem::MaxLength(policy.max_pdu),
        UserVariableItem::ImplementationClassUID(IMPLEMENTATION_CLASS_UID.to_string()),
        UserVariableItem::ImplementationVersionName(IMPLEMENTATION_VERSION.to_string()),
    ];
    let mut peer_scp_classes = HashSet::new();
    for (uid, roles) in roles {
        if roles.scp {
            peer_scp_classes.insert(uid.clone());
        }
        user_variables.push(UserVariableItem::ScuScpRoleSelectionSubItem(uid, roles));
    }
    Ok(Accepted {
        ac: AssociationAC {
            protocol_version: 1,
            application_context_name: APPLICATION_CONTEXT.to_string(),
            calling_ae_title: rq.calling_ae_title.clone(),
            called_ae_title: rq.called_ae_title.clone(),
            presentation_contexts: results,
            user_variables,
        },
        contexts,
        calling_ae: calling,
        peer_max_pdu: items.peer_max_pdu,
        permissions,
        peer_scp_classes,
    })
}

/// The protocol version, the application context and the called AE title.
fn check_header(rq: &AssociationRQ, policy: &Policy) -> Result<(), Rejected> {
    if rq.protocol_version & 1 == 0 {
        return Err(reject(
            AssociationRJResult::Permanent,
            AssociationRJSource::ServiceProviderASCE(
                AssociationRJServiceProviderASCEReason::ProtocolVersionNotSupported,
            ),
            format!("protocol version {} not supported", rq.protocol_version),
        ));
    }
    if rq.application_context_name.trim_end_matches('\0') != APPLICATION_CONTEXT {
        return Err(reject(
            AssociationRJResult::Permanent,
            AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::ApplicationContextNameNotSupported,
            ),
            format!(
                "application context {:?} not supported",
                rq.application_context_name
            ),
        ));
    }
    let called = rq.called_ae_title.trim();
    if called != policy.ae_title {
        return Err(reject(
            AssociationRJResult::Permanent,
            AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::CalledAETitleNotRecognized,
            ),
            format!(
                "called AE title {called:?} is not ours ({:?})",
                policy.ae_title
            ),
        ));
    }
    Ok(())
}

/// The permissions of the calling AE from `peer`: every one when `allowed_peers` is empty;
/// otherwise those of the first entry for its AE title and address whose certificate
/// binding (if any) the client certificate meets. An entry that names the peer but is
/// bound to another certificate is refused as an identity mismatch.
fn permissions_of(
    policy: &Policy,
    calling: &str,
    peer: IpAddr,
    cert_sha256: Option<&str>,
) -> Result<HashSet<Permission>, Rejected> {
    if policy.allowed_peers.is_empty() {
        return Ok(Permission::ALL.into_iter().collect());
    }
    let claims: Vec<&AllowedPeer> = policy
        .allowed_peers
        .iter()
        .filter(|p| {
            p.ae_title == calling
                && p.address
                    .is_none_or(|a| crate::client_key::same_host(a, peer))
        })
        .collect();
    let certified = |p: &&&AllowedPeer| match p.cert_fingerprint() {
        None => true,
        Some(want) => cert_sha256 == Some(want.as_str()),
    };
    let not_recognized = |why: String| {
        reject(
            AssociationRJResult::Permanent,
            AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::CallingAETitleNotRecognized,
            ),
            why,
        )
    };
    match claims.iter().find(certified) {
        Some(p) => Ok(p.permissions.iter().copied().collect()),
        None if !claims.is_empty() => {
            let mut rj = not_recognized(format!(
                "calling AE title {calling:?} from {peer} is bound to another client \
                 certificate than {} (allowed_peers cert_sha256)",
                cert_sha256.unwrap_or("none (no client certificate)")
            ));
            rj.identity_mismatch = true;
            Err(rj)
        }
        None => Err(not_recognized(format!(
            "calling AE title {calling:?} from {peer} is not in allowed_peers"
        ))),
    }
}

/// The user information items of a request that negotiation reads.
struct PeerItems {
    /// The peer's Maximum Length, read as on the SCU side (one owner: the writer): no item
    /// is 16 KiB, 0 no limit, anything else at least 1 KiB.
    peer_max_pdu: u32,
    /// The SCP/SCU role selection items: (SOP class, roles proposed).
    requested_roles: Vec<(String, RequestorRoles)>,
}

impl PeerItems {
    fn of(rq: &AssociationRQ) -> PeerItems {
        let mut items = PeerItems {
            peer_max_pdu: super::writer::peer_max_pdu(None),
            requested_roles: Vec::new(),
        };
        for item in &rq.user_variables {
            match item {
                UserVariableItem::MaxLength(n) => {
                    items.peer_max_pdu = super::writer::peer_max_pdu(Some(*n))
                }
                UserVariableItem::ScuScpRoleSelectionSubItem(uid, roles) => items
                    .requested_roles
                    .push((uid.trim_end_matches('\0').to_string(), *roles)),
                _ => {}
            }
        }
        items
    }
}

/// Whether the peer may take the SCP role for storage class `uid` (to receive the
/// sub-operations of its C-GET).
fn role_allowed(policy: &Policy, uid: &str) -> bool {
    policy.scp_role_classes.iter().any(|c| c == uid)
        || (policy.accept_any_storage && uids::is_storage_sop_class(uid))
}

/// The roles answered (PS3.7 D.3.3.4): for the peers that may C-GET, on storage classes,
/// the SCP role as proposed and the SCU role (sending C-STOREs) only with the `store`
/// permission; for a PACS with the `commitment` permission, on Storage Commitment, the SCP
/// role as proposed (it sends its report as the SCP) and never the SCU role (this box
/// commits to nothing).
fn granted_roles(
    requested: &[(String, RequestorRoles)],
    permissions: &HashSet<Permission>,
    policy: &Policy,
) -> Vec<(String, RequestorRoles)> {
    requested
        .iter()
        .filter_map(|(uid, roles)| {
            let granted = if uid == uids::STORAGE_COMMITMENT_PUSH_MODEL {
                if !permissions.contains(&Permission::Commitment) {
                    return None;
                }
                RequestorRoles {
                    scu: false,
                    scp: roles.scp,
                }
            } else {
                if !permissions.contains(&Permission::Get) || !role_allowed(policy, uid) {
                    return None;
                }
                RequestorRoles {
                    scu: roles.scu && permissions.contains(&Permission::Store),
                    scp: roles.scp,
                }
            };
            Some((uid.clone(), granted))
        })
        .collect()
}

/// The answer to each presentation context, and the contexts accepted. A context is
/// refused when its id is even or repeated, its abstract syntax is not served, the peer
/// lacks the permission it needs (a storage class is accepted without `store` for a peer
/// that may C-GET and proposed the SCP role for it), or no transfer syntax fits.
fn answer_contexts(
    rq: &AssociationRQ,
    policy: &Policy,
    permissions: &HashSet<Permission>,
    items: &PeerItems,
    granted_roles: &[(String, RequestorRoles)],
) -> (Vec<PresentationContextResult>, Vec<AcceptedContext>) {
    let get_receiver = |uid: &str| {
        permissions.contains(&Permission::Get)
            && role_allowed(policy, uid)
            && items.requested_roles.iter().any(|(u, r)| u == uid && r.scp)
    };
    let mut contexts = Vec::new();
    let mut results = Vec::new();
    let mut seen_ids = HashSet::new();
    for pc in &rq.presentation_contexts {
        let abstract_syntax = pc.abstract_syntax.trim_end_matches('\0').to_string();
        let offered: Vec<String> = pc
            .transfer_syntaxes
            .iter()
            .map(|t| t.trim_end_matches('\0').to_string())
            .collect();
        let needed = policy
            .abstract_syntaxes
            .iter()
            .find(|(uid, _)| *uid == abstract_syntax)
            .map(|(_, p)| *p)
            .or_else(|| {
                (policy.accept_any_storage && uids::is_storage_sop_class(&abstract_syntax))
                    .then_some(Permission::Store)
            });
        let reason = if pc.id % 2 == 0 || !seen_ids.insert(pc.id) {
            // even or duplicate ids are protocol errors: refuse the context
            Some(PresentationContextResultReason::NoReason)
        } else {
            match needed {
                None => Some(PresentationContextResultReason::AbstractSyntaxNotSupported),
                Some(p)
                    if !(permissions.contains(&p)
                        || (p == Permission::Store && get_receiver(&abstract_syntax))) =>
                {
                    Some(PresentationContextResultReason::UserRejection)
                }
                Some(_) => None,
            }
        };
        // The peer takes the SCP role (a C-GET SCU receiving its sub-operations).
        let peer_scp = granted_roles
            .iter()
            .find(|(uid, _)| *uid == abstract_syntax)
            .is_some_and(|(_, roles)| roles.scp);
        let chosen = match reason {
            Some(_) => None,
            None => choose_transfer_syntax(&abstract_syntax, &offered, policy, peer_scp),
        };
        match (reason, chosen) {
            (None, Some(ts)) => {
                results.push(PresentationContextResult {
                    id: pc.id,
                    reason: PresentationContextResultReason::Acceptance,
                    transfer_syntax: ts.clone(),
                });
                // Without a role selection item the requestor is the SCU (the default).
                let peer_scu = granted_roles
                    .iter()
                    .find(|(uid, _)| *uid == abstract_syntax)
                    .is_none_or(|(_, roles)| roles.scu);
                contexts.push(AcceptedContext {
                    id: pc.id,
                    abstract_syntax,
                    transfer_syntax: ts,
                    peer_scu,
                });
            }
            (reason, _) => results.push(PresentationContextResult {
                id: pc.id,
                reason: reason
                    .unwrap_or(PresentationContextResultReason::TransferSyntaxesNotSupported),
                transfer_syntax: uids::IMPLICIT_VR_LITTLE_ENDIAN.to_string(),
            }),
        }
    }
    (results, contexts)
}

/// Picks the transfer syntax for a context: for storage, the first one the peer proposed
/// that we accept (so data is stored as the modality encoded it) — unless the peer takes
/// the SCP role (C-GET sub-operations come from this box): then Explicit, then Implicit VR
/// Little Endian when offered, in which an instance is sent as stored or re-encoded within
/// the re-encoding limits (`inference.max_pixels`, the disk reserve), where a compressed
/// syntax would fail every instance stored otherwise (a peer with both roles then sends
/// its own C-STOREs on that context uncompressed too); for other services, the
/// uncompressed ones only.
fn choose_transfer_syntax(
    abstract_syntax: &str,
    offered: &[String],
    policy: &Policy,
    peer_scp: bool,
) -> Option<String> {
    let uncompressed = [
        uids::EXPLICIT_VR_LITTLE_ENDIAN,
        uids::IMPLICIT_VR_LITTLE_ENDIAN,
        uids::EXPLICIT_VR_BIG_ENDIAN,
    ];
    let sendable = uncompressed[..2]
        .iter()
        .find(|u| offered.iter().any(|t| t == *u));
    if let (true, Some(ts)) = (
        peer_scp && uids::is_storage_sop_class(abstract_syntax),
        sendable,
    ) {
        Some(ts.to_string())
    } else if uids::is_storage_sop_class(abstract_syntax) {
        offered
            .iter()
            .find(|t| policy.transfer_syntaxes.iter().any(|a| a == *t))
            .cloned()
    } else {
        uncompressed
            .iter()
            .find(|u| offered.iter().any(|t| t == *u))
            .map(|s| s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_ul::pdu::PresentationContextProposed;

    const CR: &str = "1.2.840.10008.5.1.4.1.1.1";
    const VERIFICATION: &str = "1.2.840.10008.1.1";
    const JPEG_LS: &str = "1.2.840.10008.1.2.4.80";

    fn policy() -> Policy {
        Policy {
            ae_title: "DULI".into(),
            allowed_peers: vec![],
            abstract_syntaxes: vec![
                (VERIFICATION.into(), Permission::Echo),
                (CR.into(), Permission::Store),
            ],
            accept_any_storage: false,
            transfer_syntaxes: vec![
                uids::EXPLICIT_VR_LITTLE_ENDIAN.into(),
                uids::IMPLICIT_VR_LITTLE_ENDIAN.into(),
                JPEG_LS.into(),
            ],
            max_pdu: 65536,
            scp_role_classes: vec![],
        }
    }

    fn rq(calling: &str, called: &str, pcs: Vec<(u8, &str, Vec<&str>)>) -> AssociationRQ {
        AssociationRQ {
            protocol_version: 1,
            calling_ae_title: calling.into(),
            called_ae_title: called.into(),
            application_context_name: APPLICATION_CONTEXT.into(),
            presentation_contexts: pcs
                .into_iter()
                .map(|(id, a, ts)| PresentationContextProposed {
                    id,
                    abstract_syntax: a.into(),
                    transfer_syntaxes: ts.into_iter().map(String::from).collect(),
                })
                .collect(),
            user_variables: vec![UserVariableItem::MaxLength(32768)],
        }
    }

    fn local() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    #[test]
    fn accepts_storage_as_proposed_and_refuses_unknown_classes() {
        let r = rq(
            "MOD",
            "DULI",
            vec![
                (1, CR, vec![JPEG_LS, uids::EXPLICIT_VR_LITTLE_ENDIAN]),
                (
                    3,
                    "1.2.840.10008.5.1.4.1.1.4",
                    vec![uids::IMPLICIT_VR_LITTLE_ENDIAN],
                ),
                (5, VERIFICATION, vec![uids::IMPLICIT_VR_LITTLE_ENDIAN]),
            ],
        );
        let a = negotiate(&r, local(), &policy()).unwrap();
        assert_eq!(a.contexts.len(), 2);
        assert_eq!(a.contexts[0].transfer_syntax, JPEG_LS);
        assert_eq!(
            a.ac.presentation_contexts[1].reason,
            PresentationContextResultReason::AbstractSyntaxNotSupported
        );
        assert_eq!(a.peer_max_pdu, 32768);
    }

    #[test]
    fn wrong_called_ae_and_unknown_calling_ae_are_rejected() {
        let r = rq(
            "MOD",
            "OTHER",
            vec![(1, CR, vec![uids::IMPLICIT_VR_LITTLE_ENDIAN])],
        );
        let e = negotiate(&r, local(), &policy()).unwrap_err();
        assert_eq!(
            e.rj.source,
            AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::CalledAETitleNotRecognized
            )
        );
        let mut p = policy();
        p.allowed_peers = vec![AllowedPeer {
            ae_title: "MOD".into(),
            address: Some(IpAddr::from([10, 0, 0, 1])),
            permissions: vec![Permission::Echo],
            cert_sha256: None,
        }];
        let r = rq(
            "MOD",
            "DULI",
            vec![(1, CR, vec![uids::IMPLICIT_VR_LITTLE_ENDIAN])],
        );
        let e = negotiate(&r, local(), &p).unwrap_err();
        assert_eq!(
            e.rj.source,
            AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::CallingAETitleNotRecognized
            )
        );
        assert_eq!(e.rj.result, AssociationRJResult::Permanent);
    }

    #[test]
    fn permissions_limit_contexts() {
        let mut p = policy();
        p.allowed_peers = vec![AllowedPeer {
            ae_title: "MOD".into(),
            address: None,
            permissions: vec![Permission::Echo],
            cert_sha256: None,
        }];
        let r = rq(
            "MOD",
            "DULI",
            vec![
                (1, CR, vec![uids::IMPLICIT_VR_LITTLE_ENDIAN]),
                (3, VERIFICATION, vec![uids::IMPLICIT_VR_LITTLE_ENDIAN]),
            ],
        );
        let a = negotiate(&r, local(), &p).unwrap();
        assert_eq!(a.contexts.len(), 1);
        assert_eq!(a.contexts[0].abstract_syntax, VERIFICATION);
        assert_eq!(
            a.ac.presentation_contexts[0].reason,
            PresentationContextResultReason::UserRejection
        );
    }

    #[test]
    fn role_selection_gives_the_scu_role_only_with_store() {
        use Permission::*;
        let mut p = policy();
        p.scp_role_classes = vec![CR.into()];
        let mut r = rq(
            "PACS",
            "DULI",
            vec![(1, CR, vec![uids::IMPLICIT_VR_LITTLE_ENDIAN])],
        );
        let both = RequestorRoles {
            scu: true,
            scp: true,
        };
        r.user_variables
            .push(UserVariableItem::ScuScpRoleSelectionSubItem(
                CR.into(),
                both,
            ));
        let scp_only = RequestorRoles {
            scu: false,
            scp: true,
        };
        // (permissions, context accepted with peer_scu, roles answered, peer may C-GET into it)
        type Case<'a> = (&'a [Permission], Option<bool>, Option<RequestorRoles>, bool);
        let cases: [Case; 4] = [
            // A C-GET SCU without `store`: the context is kept for the sub-operations only.
            (&[Echo, Find, Move, Get], Some(false), Some(scp_only), true),
            (&[Store, Get], Some(true), Some(both), true),
            // Without `get` no role is answered, and without `store` no context either.
            (&[Echo, Find], None, None, false),
            (&[Store], Some(true), None, false),
        ];
        for (permissions, peer_scu, roles, scp) in cases {
            p.allowed_peers = vec![AllowedPeer {
                ae_title: "PACS".into(),
                address: None,
                permissions: permissions.to_vec(),
                cert_sha256: None,
            }];
            let a = negotiate(&r, local(), &p).unwrap();
            let answered = a.ac.user_variables.iter().find_map(|v| match v {
                UserVariableItem::ScuScpRoleSelectionSubItem(uid, r) if uid == CR => Some(*r),
                _ => None,
            });
            assert_eq!(
                a.contexts.first().map(|c| c.peer_scu),
                peer_scu,
                "{permissions:?}"
            );
            assert_eq!(answered, roles, "{permissions:?}");
            assert_eq!(a.peer_scp_classes.contains(CR), scp, "{permissions:?}");
        }
    }

    /// A PACS sending its Storage Commitment report proposes the SCP role on Storage
    /// Commitment: granted (and never the SCU role) with the `commitment` permission;
    /// without it the context is refused and no role answered.
    #[test]
    fn a_pacs_reports_storage_commitment_in_the_scp_role_with_its_permission() {
        use Permission::*;
        const COMMIT: &str = uids::STORAGE_COMMITMENT_PUSH_MODEL;
        let mut p = policy();
        p.abstract_syntaxes.push((COMMIT.into(), Commitment));
        let mut r = rq(
            "PACS",
            "DULI",
            vec![(
                1,
                COMMIT,
                vec![
                    uids::EXPLICIT_VR_LITTLE_ENDIAN,
                    uids::IMPLICIT_VR_LITTLE_ENDIAN,
                ],
            )],
        );
        r.user_variables
            .push(UserVariableItem::ScuScpRoleSelectionSubItem(
                COMMIT.into(),
                RequestorRoles {
                    scu: true,
                    scp: true,
                },
            ));
        let scp_only = RequestorRoles {
            scu: false,
            scp: true,
        };
        type Case<'a> = (&'a [Permission], Option<bool>, Option<RequestorRoles>);
        let cases: [Case; 2] = [
            (&[Echo, Commitment], Some(false), Some(scp_only)),
            (&[Echo, Store, Find, Move, Get], None, None),
        ];
        for (permissions, peer_scu, roles) in cases {
            p.allowed_peers = vec![AllowedPeer {
                ae_title: "PACS".into(),
                address: None,
                permissions: permissions.to_vec(),
                cert_sha256: None,
            }];
            let a = negotiate(&r, local(), &p).unwrap();
            let answered = a.ac.user_variables.iter().find_map(|v| match v {
                UserVariableItem::ScuScpRoleSelectionSubItem(uid, r) if uid == COMMIT => Some(*r),
                _ => None,
            });
            assert_eq!(a.contexts.first().map(|c| c.peer_scu), peer_scu);
            assert_eq!(answered, roles, "{permissions:?}");
            if peer_scu.is_some() {
                assert_eq!(
                    a.contexts[0].transfer_syntax,
                    uids::EXPLICIT_VR_LITTLE_ENDIAN
                );
            }
        }
    }

    /// A storage context the peer takes the SCP role on (a C-GET SCU receiving its
    /// sub-operations) is accepted in Explicit, else Implicit VR Little Endian when
    /// offered, whatever the peer lists first (a compressed syntax would fail every
    /// instance stored otherwise); with none of them, the peer's first accepted one; a
    /// context the peer only sends on keeps the peer's order.
    #[test]
    fn a_c_get_scu_gets_a_syntax_every_stored_instance_can_be_sent_in() {
        use Permission::*;
        let mut p = policy();
        p.scp_role_classes = vec![CR.into()];
        let scp_only = RequestorRoles {
            scu: false,
            scp: true,
        };
        let chosen =
            |permissions: &[Permission], offered: Vec<&str>, roles: Option<RequestorRoles>| {
                let mut p = p.clone();
                p.allowed_peers = vec![AllowedPeer {
                    ae_title: "PACS".into(),
                    address: None,
                    permissions: permissions.to_vec(),
                    cert_sha256: None,
                }];
                let mut r = rq("PACS", "DULI", vec![(1, CR, offered)]);
                if let Some(roles) = roles {
                    r.user_variables
                        .push(UserVariableItem::ScuScpRoleSelectionSubItem(
                            CR.into(),
                            roles,
                        ));
                }
                negotiate(&r, local(), &p).unwrap().contexts[0]
                    .transfer_syntax
                    .clone()
            };
        let get = [Echo, Find, Move, Get];
        let explicit = uids::EXPLICIT_VR_LITTLE_ENDIAN;
        let implicit = uids::IMPLICIT_VR_LITTLE_ENDIAN;
        assert_eq!(
            chosen(&get, vec![JPEG_LS, implicit, explicit], Some(scp_only)),
            explicit
        );
        assert_eq!(
            chosen(&get, vec![JPEG_LS, implicit], Some(scp_only)),
            implicit
        );
        assert_eq!(chosen(&get, vec![JPEG_LS], Some(scp_only)), JPEG_LS);
        assert_eq!(chosen(&[Store], vec![JPEG_LS, explicit], None), JPEG_LS);
    }

    #[test]
    fn too_many_contexts_are_rejected() {
        let pcs: Vec<_> = (0..200u32)
            .map(|i| {
                (
                    ((i * 2 + 1) % 256) as u8,
                    CR,
                    vec![uids::IMPLICIT_VR_LITTLE_ENDIAN],
                )
            })
            .collect();
        let r = rq("MOD", "DULI", pcs);
        assert!(negotiate(&r, local(), &policy()).is_err());
    }

    #[test]
    fn busy_is_transient() {
        let r = reject_busy(32);
        assert_eq!(r.rj.result, AssociationRJResult::Transient);
    }

    #[test]
    fn a_certificate_bound_ae_needs_its_certificate() {
        let mut p = policy();
        let fp = "ab".repeat(32);
        p.allowed_peers = vec![AllowedPeer {
            ae_title: "MOD".into(),
            address: None,
            permissions: vec![Permission::Echo],
            cert_sha256: Some(fp.to_uppercase()),
        }];
        let r = rq(
            "MOD",
            "DULI",
            vec![(3, VERIFICATION, vec![uids::IMPLICIT_VR_LITTLE_ENDIAN])],
        );
        assert!(negotiate_with_cert(&r, local(), Some(&fp), &p).is_ok());
        for cert in [None, Some("cd".repeat(32))] {
            let e = negotiate_with_cert(&r, local(), cert.as_deref(), &p).unwrap_err();
            assert!(e.identity_mismatch, "{}", e.reason);
            assert_eq!(
                e.rj.source,
                AssociationRJSource::ServiceUser(
                    AssociationRJServiceUserReason::CallingAETitleNotRecognized
                )
            );
        }
        // Plain DICOM never carries a certificate.
        assert!(negotiate(&r, local(), &p).unwrap_err().identity_mismatch);
        // An AE not on the list at all is no identity claim.
        let other = rq(
            "OTHER",
            "DULI",
            vec![(3, VERIFICATION, vec![uids::IMPLICIT_VR_LITTLE_ENDIAN])],
        );
        assert!(
            !negotiate_with_cert(&other, local(), Some(&fp), &p)
                .unwrap_err()
                .identity_mismatch
        );
    }
}
