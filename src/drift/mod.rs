//! The pure drift engine: normalise, compare, ignore rules, managedFields attribution.
