//! One lease kept alive for a process (written by the nerve work; see the crate docs).
