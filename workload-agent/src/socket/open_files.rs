//! The agent's open-files limit. Every pinned connection holds two descriptors (the socket and
//! the caller's pidfd), so the default connection budget (4,096) needs more than 8,192 of
//! them, far above the 1,024 soft limit most init systems start a daemon with. The soft limit
//! is raised to the hard limit at start, as Go's runtime does for every program, and the
//! result is logged so an operator can see when the hard limit itself is too low.

/// Raises the open-files limit at start ([`raise_to_hard_limit`]) and warns when it is still
/// below what `limits` needs ([`needed_for`]): pinning then fails with `proc_unreadable`
/// once descriptors run out, and callers are refused.
pub fn raise_for(limits: &super::ConnectionLimits) {
    match raise_to_hard_limit() {
        Ok(limit) => {
            let needed = needed_for(limits.max_connections);
            if limit < needed {
                tracing::warn!(
                    limit,
                    needed,
                    "the open-files limit is below what the connection budget needs (two \
                     descriptors per connection); raise LimitNOFILE / the container's nofile"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
pub fn raise_to_hard_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; raising the soft limit up to the hard one needs
        // no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok(lim.rlim_cur)
}

/// Descriptors the agent needs for `max_connections` pinned connections, plus room for
/// everything else it opens (server connection, /proc reads, binaries being hashed).
pub fn needed_for(max_connections: usize) -> u64 {
    2 * max_connections as u64 + 256
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let soft = raise_to_hard_limit().unwrap();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid, writable rlimit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(soft, lim.rlim_cur);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
        assert_eq!(needed_for(4096), 8448);
    }
}
