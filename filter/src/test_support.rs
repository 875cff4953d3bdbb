//! Test doubles for the host.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::limits::{CasMismatch, SharedStore};

/// proxy-wasm shared data semantics: a CAS token that changes on every write.
#[derive(Default)]
pub struct MemStore {
    data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    /// Reads so far (each is a host call in Envoy).
    pub reads: std::cell::Cell<usize>,
}

impl SharedStore for MemStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.reads.set(self.reads.get() + 1);
        match self.data.borrow().get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        let mut data = self.data.borrow_mut();
        let current = data.get(key).map(|(_, c)| *c);
        if cas != current {
            return Err(CasMismatch);
        }
        let next = current.unwrap_or(0) + 1;
        data.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}
