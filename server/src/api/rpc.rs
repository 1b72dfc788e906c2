//! JSON-RPC 2.0 of the admin API (SPEC §7): method names, parameters and
//! results as clients see them, mapped to and from `vcodr-core` types.
//! Errors name the parameter or the reason, never just "bad request".

use serde_json::{json, Map, Value};
use vcodr_core::*;

/// JSON-RPC error codes used by vcodr.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL: i64 = -32603;
    /// Not served in this role (standby, zombie) or drState.
    pub const WRONG_ROLE: i64 = -32001;
    pub const NOT_FOUND: i64 = -32002;
    /// The write was not acknowledged and this call will not acknowledge
    /// it: refused before it was logged (blocked, overloaded: no effect), or
    /// logged but answered without its acknowledgement (fenced, demoted,
    /// blocked at the grace: the message says whether it may still take effect).
    pub const NOT_ACKNOWLEDGED: i64 = -32003;
    pub const UNAUTHORIZED: i64 = -32004;
    pub const PAIRING: i64 = -32005;
    /// This server cannot tell whether the write is or will be durable: no
    /// acknowledgement within `limits.write_timeout_ms`, storage failed
    /// while it was in flight, or the server stopped meanwhile. Check with
    /// `configuration/get` (after the restart) before retrying.
    pub const OUTCOME_UNKNOWN: i64 = -32006;
}

/// A JSON-RPC error object.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn param(name: &str, why: impl std::fmt::Display) -> Self {
        RpcError::new(
            code::INVALID_PARAMS,
            format!("invalid params: `{name}` {why}"),
        )
    }

    pub fn to_json(&self) -> Value {
        let mut e = json!({ "code": self.code, "message": self.message });
        if let Some(d) = &self.data {
            e["data"] = d.clone();
        }
        e
    }
}

impl From<CommandError> for RpcError {
    fn from(e: CommandError) -> Self {
        let c = match &e {
            CommandError::StandbyRefuses { .. }
            | CommandError::ZombieRefuses { .. }
            | CommandError::WrongState { .. } => code::WRONG_ROLE,
            CommandError::NotFound(_) => code::NOT_FOUND,
            CommandError::PairingRefused(_) => code::PAIRING,
            CommandError::InvalidParam { .. } => code::INVALID_PARAMS,
            CommandError::WritesBlocked(_)
            | CommandError::Overloaded { .. }
            | CommandError::PendingBytes { .. }
            | CommandError::NotAcknowledged { .. }
            | CommandError::SwitchoverAbandoned(_) => code::NOT_ACKNOWLEDGED,
        };
        let data = match &e {
            CommandError::StandbyRefuses {
                active_admin: Some(a),
                ..
            } => Some(json!({ "activeAddress": a })),
            CommandError::ZombieRefuses {
                promoted_admin: Some(a),
                fenced_by,
                ..
            } => Some(json!({ "activeAddress": a, "fencedBy": fenced_by })),
            _ => None,
        };
        RpcError {
            code: c,
            message: e.to_string(),
            data,
        }
    }
}

/// Optional tables of `getReplicationStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct With {
    pub client_contact: bool,
    pub client_count: bool,
    pub state_history: bool,
    pub storage_info: bool,
}

/// A parsed API call.
#[derive(Clone, Debug, PartialEq)]
pub enum ApiCall {
    /// Handled by the core.
    Core(Command),
    Status(With),
    DivergenceArchive {
        offset: u64,
        limit: usize,
    },
    ClientSamples {
        client_id: String,
        after_seq: u64,
        limit: usize,
    },
    MonitoringSummary,
}

impl ApiCall {
    /// The method this call is of.
    pub fn method(&self) -> Method {
        match self {
            ApiCall::Core(c) => c.method(),
            ApiCall::Status(_) => Method::GetReplicationStatus,
            ApiCall::DivergenceArchive { .. } => Method::GetDivergenceArchive,
            ApiCall::ClientSamples { .. } => Method::MonitoringGetClientSamples,
            ApiCall::MonitoringSummary => Method::MonitoringGetSummary,
        }
    }

    /// What the role gate sees of this call.
    pub fn kind(&self) -> RequestKind {
        self.method().kind()
    }
}

/// Every method the API serves, by wire name ([`Method::ALL`]).
pub const METHODS: [&str; Method::ALL.len()] = {
    let mut names = [""; Method::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = Method::ALL[i].name();
        i += 1;
    }
    names
};

fn obj(params: &Value) -> Result<Option<&Map<String, Value>>, RpcError> {
    match params {
        Value::Null => Ok(None),
        Value::Object(m) => Ok(Some(m)),
        _ => Err(RpcError::new(
            code::INVALID_PARAMS,
            "invalid params: `params` must be an object",
        )),
    }
}

fn get<'a>(p: Option<&'a Map<String, Value>>, name: &str) -> Option<&'a Value> {
    p.and_then(|m| m.get(name)).filter(|v| !v.is_null())
}

fn string(p: Option<&Map<String, Value>>, name: &str) -> Result<String, RpcError> {
    match get(p, name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(RpcError::param(name, "must be a string")),
        None => Err(RpcError::param(name, "is required")),
    }
}

fn boolean(p: Option<&Map<String, Value>>, name: &str) -> Result<bool, RpcError> {
    match get(p, name) {
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(RpcError::param(name, "must be true or false")),
        None => Ok(false),
    }
}

fn number(
    p: Option<&Map<String, Value>>,
    name: &str,
    default: u64,
    max: u64,
) -> Result<u64, RpcError> {
    match get(p, name) {
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(n),
            _ => Err(RpcError::param(
                name,
                format!("must be an integer from 0 to {max}"),
            )),
        },
        None => Ok(default),
    }
}

/// 32 lower-case hex digits: how uuids, pair ids and tokens are written.
pub fn hex128(v: u128) -> String {
    format!("{v:032x}")
}

pub fn parse_hex128(name: &str, s: &str) -> Result<u128, RpcError> {
    let t = s.trim().trim_start_matches("0x").replace('-', "");
    if t.is_empty() || t.len() > 32 {
        return Err(RpcError::param(name, "must be up to 32 hex digits"));
    }
    u128::from_str_radix(&t, 16).map_err(|_| RpcError::param(name, format!("{s:?} is not hex")))
}

/// The replication blob (`getReplicationBlob` → `transitionToStandby`).
pub fn encode_blob(active: &ServerInfo, token: u128) -> String {
    format!(
        "vcodr1;{};{};{}",
        hex128(active.uuid),
        hex128(token),
        active.peer_address
    )
}

pub fn decode_blob(s: &str) -> Result<(String, u128, u128), RpcError> {
    let parts: Vec<&str> = s.trim().splitn(4, ';').collect();
    match parts[..] {
        ["vcodr1", uuid, token, address] if !address.is_empty() => Ok((
            address.to_string(),
            parse_hex128("activeAccessFromStandby", uuid)?,
            parse_hex128("activeAccessFromStandby", token)?,
        )),
        _ => Err(RpcError::param(
            "activeAccessFromStandby",
            "is not a blob from getReplicationBlob (vcodr1;…)",
        )),
    }
}

/// Parses a method and its params into a call.
pub fn parse_call(method: &str, params: &Value) -> Result<ApiCall, RpcError> {
    let p = obj(params)?;
    let Some(m) = Method::from_name(method) else {
        let mut e = RpcError::new(
            code::METHOD_NOT_FOUND,
            format!("method not found: {method:?}"),
        );
        e.data = Some(json!({ "methods": METHODS }));
        return Err(e);
    };
    let call = match m {
        Method::PrepareForStandby => ApiCall::Core(Command::PrepareForStandby),
        Method::ConfigureActiveForReplication => {
            let list = match get(p, "standbyList") {
                Some(Value::Array(a)) if a.len() == 1 => &a[0],
                Some(Value::Array(a)) => {
                    return Err(RpcError::param(
                        "standbyList",
                        format!("must hold exactly one standby, not {}", a.len()),
                    ))
                }
                Some(_) => return Err(RpcError::param("standbyList", "must be an array")),
                None => return Err(RpcError::param("standbyList", "is required")),
            };
            let entry = list
                .as_object()
                .ok_or_else(|| RpcError::param("standbyList[0]", "must be an object"))?;
            let standby_address = match entry.get("standbyAddress") {
                Some(Value::String(s)) => s.clone(),
                _ => {
                    return Err(RpcError::param(
                        "standbyList[0].standbyAddress",
                        "is required (the standby's peer_listen)",
                    ))
                }
            };
            let standby_uuid = match entry.get("standbyUuid") {
                Some(Value::String(s)) => parse_hex128("standbyList[0].standbyUuid", s)?,
                _ => {
                    return Err(RpcError::param(
                        "standbyList[0].standbyUuid",
                        "is required (its vcoUuid)",
                    ))
                }
            };
            let pairing_token = parse_hex128("pairingToken", &string(p, "pairingToken")?)?;
            ApiCall::Core(Command::ConfigureActive {
                standby_address,
                standby_uuid,
                pairing_token,
            })
        }
        Method::GetReplicationBlob => ApiCall::Core(Command::GetReplicationBlob),
        Method::TransitionToStandby => {
            let (active_address, active_uuid, pairing_token) =
                decode_blob(&string(p, "activeAccessFromStandby")?)?;
            ApiCall::Core(Command::TransitionToStandby {
                active_address,
                active_uuid,
                pairing_token,
            })
        }
        Method::GetReplicationStatus => {
            let mut w = With::default();
            match get(p, "with") {
                None => {}
                Some(Value::Array(items)) => {
                    for it in items {
                        match it.as_str() {
                            Some("clientContact") => w.client_contact = true,
                            Some("clientCount") => w.client_count = true,
                            Some("stateHistory") => w.state_history = true,
                            Some("storageInfo") => w.storage_info = true,
                            _ => {
                                return Err(RpcError::param(
                                    "with",
                                    format!("{it} is not one of clientContact, clientCount, stateHistory, storageInfo"),
                                ))
                            }
                        }
                    }
                }
                Some(_) => return Err(RpcError::param("with", "must be an array of table names")),
            }
            ApiCall::Status(w)
        }
        Method::PromoteStandbyToActive => ApiCall::Core(Command::Promote {
            force: boolean(p, "force")?,
        }),
        Method::DemoteActive => ApiCall::Core(Command::DemoteActive {
            force: boolean(p, "force")?,
        }),
        Method::RemoveStandby => ApiCall::Core(Command::RemoveStandby {
            force: boolean(p, "force")?,
        }),
        Method::RejoinAsStandby => ApiCall::Core(Command::Rejoin),
        Method::GetDivergenceArchive => ApiCall::DivergenceArchive {
            offset: number(p, "offset", 0, u64::MAX)?,
            limit: number(
                p,
                "limit",
                ARCHIVE_PAGE_DEFAULT as u64,
                ARCHIVE_PAGE_MAX as u64,
            )? as usize,
        },
        Method::ConfigurationGet => ApiCall::Core(Command::Get {
            key: string(p, "key")?,
        }),
        Method::ConfigurationList => ApiCall::Core(Command::List),
        Method::ConfigurationPut => {
            let key = string(p, "key")?;
            let value = get(p, "value")
                .ok_or_else(|| RpcError::param("value", "is required (any JSON value)"))?;
            ApiCall::Core(Command::Put {
                key,
                value: serde_json::to_vec(value).map_err(|e| RpcError::param("value", e))?,
            })
        }
        Method::ConfigurationDelete => ApiCall::Core(Command::Delete {
            key: string(p, "key")?,
        }),
        Method::MonitoringGetClientSamples => ApiCall::ClientSamples {
            client_id: string(p, "clientId")?,
            after_seq: number(p, "afterSeq", 0, u64::MAX)?,
            limit: number(p, "limit", 1000, 100_000)? as usize,
        },
        Method::MonitoringGetSummary => ApiCall::MonitoringSummary,
    };
    Ok(call)
}

/// A request the admin API will serve: its `id` (echoed in the response),
/// its method (named in logs) and the parsed call.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub id: Value,
    pub method: String,
    pub call: ApiCall,
}

/// A request refused before it reaches the server: the `id` to answer with
/// (`null` when the body is not JSON or has none), the method when one was
/// named, and the error to answer.
#[derive(Clone, Debug, PartialEq)]
pub struct BadRequest {
    pub id: Value,
    pub method: Option<String>,
    pub error: RpcError,
}

/// Parses the body of a `POST /portal/`: the JSON-RPC 2.0 envelope
/// (`jsonrpc`, `method`, `id`, `params`), then the method and its params
/// ([`parse_call`]). Pure: the admin handler calls it and nothing else reads
/// a request body, so what the fuzz target `rpc_request` feeds is exactly
/// what is served. Never panics; the body's size is bounded by the HTTP
/// layer, and JSON nesting by serde_json's recursion limit.
pub fn parse_request(body: &[u8]) -> Result<Request, BadRequest> {
    let req: Value = serde_json::from_slice(body).map_err(|e| BadRequest {
        id: Value::Null,
        method: None,
        error: RpcError::new(
            code::PARSE_ERROR,
            format!("parse error: the body is not JSON ({e})"),
        ),
    })?;
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let method = match (
        req.get("jsonrpc").and_then(Value::as_str),
        req.get("method").and_then(Value::as_str),
    ) {
        (Some("2.0"), Some(m)) => m.to_string(),
        _ => {
            return Err(BadRequest {
                id,
                method: None,
                error: RpcError::new(
                    code::INVALID_REQUEST,
                    "invalid request: need {\"jsonrpc\":\"2.0\",\"method\":…,\"id\":…}",
                ),
            })
        }
    };
    let params = req.get("params").unwrap_or(&Value::Null);
    match parse_call(&method, params) {
        Ok(call) => Ok(Request { id, method, call }),
        Err(error) => Err(BadRequest {
            id,
            method: Some(method),
            error,
        }),
    }
}

/// The JSON-RPC 2.0 response to request `id`.
pub fn response(id: Value, r: Result<Value, RpcError>) -> Value {
    match r {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
        Err(e) => json!({ "jsonrpc": "2.0", "id": id, "error": e.to_json() }),
    }
}

/// Rows of a `getDivergenceArchive` page when `limit` is not given.
pub const ARCHIVE_PAGE_DEFAULT: usize = 100;
/// The largest `limit` of a `getDivergenceArchive` page.
pub const ARCHIVE_PAGE_MAX: usize = crate::storage::READ_ROWS_MAX;

#[cfg(test)]
mod tests {
    use super::super::json::*;
    use super::*;

    #[test]
    fn configure_params_are_checked_by_name() {
        let ok = json!({"standbyList":[{"standbyAddress":"127.0.0.1:7443","standbyUuid":"00000000000000000000000000000abc"}],"pairingToken":"ff"});
        assert_eq!(
            parse_call("disasterRecovery/configureActiveForReplication", &ok),
            Ok(ApiCall::Core(Command::ConfigureActive {
                standby_address: "127.0.0.1:7443".into(),
                standby_uuid: 0xabc,
                pairing_token: 0xff
            }))
        );
        let missing = json!({"standbyList":[{"standbyAddress":"x"}],"pairingToken":"ff"});
        let e = parse_call("disasterRecovery/configureActiveForReplication", &missing).unwrap_err();
        assert_eq!(e.code, code::INVALID_PARAMS);
        assert!(
            e.message.contains("standbyList[0].standbyUuid"),
            "{}",
            e.message
        );
        let e = parse_call("configuration/put", &json!({"key":"k"})).unwrap_err();
        assert!(e.message.contains("`value` is required"), "{}", e.message);
        let e = parse_call("configuration/get", &json!([1])).unwrap_err();
        assert!(e.message.contains("must be an object"), "{}", e.message);
        let e = parse_call("nope/nope", &Value::Null).unwrap_err();
        assert_eq!(e.code, code::METHOD_NOT_FOUND);
    }

    #[test]
    fn requests_are_read_envelope_first() {
        let ok = parse_request(
            br#"{"jsonrpc":"2.0","id":"x","method":"configuration/get","params":{"key":"k"}}"#,
        );
        assert_eq!(
            ok,
            Ok(Request {
                id: json!("x"),
                method: "configuration/get".into(),
                call: ApiCall::Core(Command::Get { key: "k".into() }),
            })
        );
        let e = parse_request(b"{not json").unwrap_err();
        assert_eq!(
            (e.id, e.method, e.error.code),
            (Value::Null, None, code::PARSE_ERROR)
        );
        let e = parse_request(br#"{"jsonrpc":"1.0","id":7,"method":"configuration/list"}"#)
            .unwrap_err();
        assert_eq!(
            (e.id, e.method, e.error.code),
            (json!(7), None, code::INVALID_REQUEST)
        );
        let e = parse_request(
            br#"{"jsonrpc":"2.0","id":8,"method":"configuration/put","params":{"value":1}}"#,
        )
        .unwrap_err();
        assert_eq!(e.id, json!(8));
        assert_eq!(e.method.as_deref(), Some("configuration/put"));
        assert!(e.error.message.contains("`key`"), "{}", e.error.message);
        assert_eq!(
            response(json!(8), Err(e.error))["error"]["code"],
            json!(code::INVALID_PARAMS)
        );
    }

    #[test]
    fn values_are_any_json_and_round_trip() {
        let call =
            parse_call("configuration/put", &json!({"key":"k","value":{"a":[1,2]}})).unwrap();
        let ApiCall::Core(Command::Put { value, .. }) = call else {
            panic!()
        };
        let doc = reply_json(&Reply::Doc {
            key: "k".into(),
            value,
            version: 3,
        });
        assert_eq!(doc, json!({"key":"k","value":{"a":[1,2]},"version":3}));
    }

    #[test]
    fn archive_pages_say_the_total_and_where_the_next_one_starts() {
        let call = |params: Value| parse_call("disasterRecovery/getDivergenceArchive", &params);
        assert_eq!(
            call(json!({})),
            Ok(ApiCall::DivergenceArchive {
                offset: 0,
                limit: ARCHIVE_PAGE_DEFAULT
            })
        );
        assert_eq!(
            call(json!({"offset": 200, "limit": 10_000})),
            Ok(ApiCall::DivergenceArchive {
                offset: 200,
                limit: 10_000
            })
        );
        let e = call(json!({"limit": 10_001})).unwrap_err();
        assert!(
            e.message.contains("`limit`") && e.message.contains("10000"),
            "{}",
            e.message
        );
        let row = |index| crate::storage::ArchivedEntry {
            index,
            epoch: 1,
            op: Op::Delete {
                key: format!("k{index}"),
            },
            reason: "rejoin".into(),
        };
        let rows: Vec<_> = (11..=12).map(row).collect();
        let page = archive_page_json(5, 2, 2, &rows);
        assert_eq!(
            page,
            json!({
                "total": 5, "offset": 2, "limit": 2, "next": 4,
                "entries": [
                    {"position": 2, "index": 11, "epoch": 1, "reason": "rejoin", "entry": {"op": "delete", "key": "k11"}},
                    {"position": 3, "index": 12, "epoch": 1, "reason": "rejoin", "entry": {"op": "delete", "key": "k12"}},
                ],
            })
        );
        assert_eq!(archive_page_json(4, 2, 2, &rows)["next"], Value::Null);
        assert_eq!(archive_page_json(0, 0, 100, &[])["next"], Value::Null);
        assert_eq!(archive_page_json(3, 7, 100, &[])["next"], Value::Null);
    }

    #[test]
    fn blobs_round_trip() {
        let info = ServerInfo {
            uuid: 7,
            name: "a".into(),
            peer_address: "[::1]:7443".into(),
            edge_address: String::new(),
            admin_address: String::new(),
        };
        let b = encode_blob(&info, 9);
        assert_eq!(decode_blob(&b), Ok(("[::1]:7443".into(), 7, 9)));
        assert!(decode_blob("garbage").is_err());
    }

    #[test]
    fn refusals_carry_the_active_address() {
        let e: RpcError = CommandError::StandbyRefuses {
            method: "configuration/put".into(),
            state: DrState::StandbyRunning,
            active_admin: Some("127.0.0.1:8443".into()),
        }
        .into();
        assert_eq!(e.code, code::WRONG_ROLE);
        assert_eq!(e.data, Some(json!({"activeAddress":"127.0.0.1:8443"})));
        assert!(e.message.contains("127.0.0.1:8443"));
    }
}
