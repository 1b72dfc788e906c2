//! The protocol of this crate's unit tests: `u64` requests, answers and
//! messages; every role of the deployment may dial it.

use crate::Protocol;
use vcodr_core::CertRole;

pub(crate) struct Echo;

impl Protocol for Echo {
    const NAME: &'static str = "vcodr-test-echo";
    const ACCEPTS: &'static [CertRole] = &CertRole::ALL;
    type Request = u64;
    type Response = u64;
    type Message = u64;
}
