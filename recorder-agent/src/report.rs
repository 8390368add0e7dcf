//! One-line error reports. Errors here carry their cause as `source` and never repeat it in
//! their own message; this prints the chain once, `error: cause: cause`, the way `main` prints
//! a failed command (`{:#}`), for log fields and HTTP error bodies.

use std::{error::Error, fmt};

/// An error and its causes on one line.
#[derive(Clone, Copy, Debug)]
pub struct Report<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading /x")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn each_cause_once() {
        let err = Outer(std::io::Error::other("denied"));
        assert_eq!(Report(&err).to_string(), "reading /x: denied");
    }
}
