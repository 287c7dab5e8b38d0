pub mod transport;
pub mod process;
