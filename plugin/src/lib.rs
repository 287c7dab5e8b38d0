pub mod logstore;
