//! One image call from arguments to links: argument parsing and checks
//! (`args`), an edit's preparation with its reference reads (`edit`), the
//! run itself with budgets, the model chain, storing and audit (`run`), the
//! Content Credentials every stored image gets (`credentials`), and the
//! progress it reports (`progress`).

pub mod args;
pub mod credentials;
pub mod edit;
pub mod progress;
pub mod run;
pub mod screen;
