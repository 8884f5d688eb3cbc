//! Telling the kernel that its caches are stale (FUSE notifications): the transport's side
//! of the core's `KernelCache`. The kernel names its inodes by node id: a notification about
//! an object goes to each of its node ids (`nodeid`).

use super::nodeid::NodeIds;
use crate::inode::Ino;
use crate::overlay::KernelCache;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, OnceLock};

/// The core's `KernelCache`, given to it when it is built, before the session (and so the
/// notifier) exists: `connect` attaches the session once it does. Until then there is
/// nothing cached to invalidate.
#[derive(Clone, Default)]
pub struct KernelCacheLink(Arc<OnceLock<KernelNotifier>>);

impl KernelCacheLink {
    /// Attaches the live session's notifier and the transport's node ids (once; a second
    /// call is ignored).
    pub(crate) fn connect(&self, notifier: fuser::Notifier, ids: Arc<NodeIds>) {
        if self.0.get().is_none() {
            let _ = self.0.set(KernelNotifier::start(notifier, ids)); // set once, at mount
        }
    }
}

impl KernelCache for KernelCacheLink {
    fn inval_attr(&self, ino: Ino) {
        if let Some(k) = self.0.get() {
            k.inval_attr(ino);
        }
    }

    fn inval_entry(&self, parent: Ino, name: &[u8]) {
        if let Some(k) = self.0.get() {
            k.inval_entry(parent, name);
        }
    }
}

/// Invalidates the kernel's caches through FUSE notifications. Entry invalidations take the
/// directory's lock in the kernel, so they are sent from a thread of their own, never from
/// the request that caused them.
struct KernelNotifier {
    notifier: fuser::Notifier,
    entries: Sender<(Ino, Vec<u8>)>,
    ids: Arc<NodeIds>,
}

impl KernelNotifier {
    fn start(notifier: fuser::Notifier, ids: Arc<NodeIds>) -> KernelNotifier {
        let (tx, rx) = channel::<(Ino, Vec<u8>)>();
        let n2 = notifier.clone();
        let ids2 = Arc::clone(&ids);
        let spawned = std::thread::Builder::new()
            .name("inval".into())
            .spawn(move || {
                for (parent, name) in rx {
                    let name = OsStr::from_bytes(&name);
                    for node in ids2.all(parent) {
                        if let Err(e) = n2.inval_entry(fuser::INodeNo(node.0), name) {
                            log::debug!("inval_entry({node}, {name:?}): {e}");
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!(
                "no invalidation thread ({e}): hard links broken by copy-up may show stale data"
            );
        }
        KernelNotifier {
            notifier,
            entries: tx,
            ids,
        }
    }

    fn inval_attr(&self, ino: Ino) {
        // Only attributes (offset -1): never waits on page locks a request may hold.
        for node in self.ids.all(ino) {
            if let Err(e) = self.notifier.inval_inode(fuser::INodeNo(node.0), -1, 0) {
                log::debug!("inval_inode({node}): {e}");
            }
        }
    }

    fn inval_entry(&self, parent: Ino, name: &[u8]) {
        let _ = self.entries.send((parent, name.to_vec())); // the thread is gone only at exit
    }
}
