pub mod process;
pub mod transport;
