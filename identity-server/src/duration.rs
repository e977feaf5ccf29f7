//! The one duration parser, shared with the other daemons and LanyardIdentity TTLs.

pub use lanyard_daemon::duration::parse_duration;
