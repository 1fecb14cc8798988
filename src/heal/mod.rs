//! Heal planning (pure) and execution.
