//! Group membership: the consumer protocol's messages, the assignors the
//! leader runs, and the member's state machine.

pub(crate) mod assignor;
pub(crate) mod consumer_member;
pub(crate) mod driver;
pub(crate) mod member;
pub(crate) mod protocol;
