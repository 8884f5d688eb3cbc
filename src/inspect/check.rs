//! placeholder
use super::Outcome;
use crate::config::Stack;
use crate::error::StartupError;
pub fn run(
    _s: &Stack,
    _fix: bool,
    _json: bool,
    _out: &mut impl std::io::Write,
) -> Result<Outcome, StartupError> {
    Err(StartupError::new("check: not implemented yet"))
}
