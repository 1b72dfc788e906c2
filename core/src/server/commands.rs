//! Operator commands (SPEC §3, §7): the dispatch after the role gate, and
//! configuration reads and writes.

use super::commit::PendingWrite;
use super::Server;
use crate::api::*;
use crate::types::*;

impl Server {
    pub(super) fn on_command(&mut self, req: RequestId, cmd: Command) {
        let method = cmd.method();
        if let Err(e) = self.gate(method.kind(), method.name()) {
            self.reply(req, Err(e));
            return;
        }
        let result = match cmd {
            Command::PrepareForStandby => self.cmd_prepare(req),
            Command::ConfigureActive {
                standby_address,
                standby_uuid,
                pairing_token,
            } => self.cmd_configure(req, standby_address, standby_uuid, pairing_token),
            Command::GetReplicationBlob => self.cmd_blob(req),
            Command::TransitionToStandby {
                active_address,
                active_uuid,
                pairing_token,
            } => self.cmd_transition_to_standby(req, active_address, active_uuid, pairing_token),
            Command::Promote { force } => self.cmd_promote(req, force),
            Command::DemoteActive { force } => self.cmd_demote(req, force),
            Command::RemoveStandby { force } => self.cmd_remove_standby(req, force),
            Command::Rejoin => self.cmd_rejoin(req),
            Command::Put { key, value } => self.cmd_write(req, key, Some(value)),
            Command::Delete { key } => self.cmd_write(req, key, None),
            Command::Get { key } => match self.applied.docs.get(&key) {
                Some(d) => Ok(Some(Reply::Doc {
                    key,
                    value: d.value.clone(),
                    version: d.version,
                })),
                None => Err(CommandError::NotFound(key)),
            },
            Command::List => Ok(Some(Reply::List(
                self.applied
                    .docs
                    .iter()
                    .map(|(k, d)| (k.clone(), d.version))
                    .collect(),
            ))),
        };
        match result {
            Ok(Some(r)) => self.reply(req, Ok(r)),
            Ok(None) => {}
            Err(e) => self.reply(req, Err(e)),
        }
    }

    /// Refuses an append of about `size` bytes when the entries waiting to
    /// commit already hold `max_pending_bytes` (the standby is slow or lost):
    /// memory for uncommitted entries stays bounded in bytes, not only in count.
    pub(super) fn pending_bytes_error(&self, size: usize) -> Option<CommandError> {
        let waiting = self.log.bytes_after(self.applied.index);
        (waiting + size as u64 > self.cfg.max_pending_bytes).then_some(CommandError::PendingBytes {
            waiting,
            limit: self.cfg.max_pending_bytes,
        })
    }

    fn cmd_write(
        &mut self,
        req: RequestId,
        key: String,
        value: Option<Vec<u8>>,
    ) -> Result<Option<Reply>, CommandError> {
        if key.is_empty() || key.len() > 1024 {
            return Err(CommandError::InvalidParam {
                param: "key".into(),
                why: format!("{} bytes; give 1 to 1024", key.len()),
            });
        }
        if let Some(v) = &value {
            let limit = self.cfg.max_sample_batch_bytes();
            if v.len() > limit {
                return Err(CommandError::InvalidParam {
                    param: "value".into(),
                    why: format!("{} bytes is above the {limit} byte limit", v.len()),
                });
            }
        }
        if let Some(why) = self
            .role
            .active()
            .and_then(|a| a.write_refusal(self.failure.as_deref()))
        {
            return Err(CommandError::WritesBlocked(why));
        }
        if self.writes.len() >= self.cfg.max_pending_writes {
            return Err(CommandError::Overloaded {
                waiting: self.writes.len(),
                limit: self.cfg.max_pending_writes,
            });
        }
        let size = key.len() + value.as_ref().map_or(0, Vec::len);
        if let Some(e) = self.pending_bytes_error(size) {
            return Err(e);
        }
        let delete = value.is_none();
        if delete && !self.applied.docs.contains_key(&key) {
            return Err(CommandError::NotFound(key));
        }
        let op = match value {
            Some(value) => Op::Put {
                key: key.clone(),
                value,
            },
            None => Op::Delete { key: key.clone() },
        };
        let index = self.append_op(op);
        self.writes.push_back(PendingWrite {
            req,
            index,
            key,
            delete,
        });
        Ok(None)
    }
}
