//! Wire types (filled in by the schema work).
