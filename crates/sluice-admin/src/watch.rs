//! Background triggers of [`Reloader`]: the config file watched on disk (its directory, since
//! editors and config managers replace files by renaming), debounced so a save in several
//! writes is one reload; and a poll of the database's tenants generation, so tenants changed by
//! `sluice tenants …` in another process reach a running gateway without a restart.

use crate::reload::Reloader;
use notify::{RecursiveMode, Watcher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Keeps the file watch alive; dropping it (or aborting) stops watching.
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatch").finish_non_exhaustive()
    }
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watch the reloader's config file and reload it `debounce` after the last change seen. A
/// change that leaves the text as it was is ignored; an invalid file is logged and the running
/// config stays.
pub fn watch_file(
    reloader: Arc<Reloader>,
    debounce: Duration,
) -> Result<Option<FileWatch>, String> {
    let Some(path) = reloader.path().map(PathBuf::from) else {
        return Ok(None);
    };
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let dir = path
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let Some(name) = path.file_name().map(|n| n.to_owned()) else {
        return Err(format!("{} is not a file", path.display()));
    };
    // Capacity 1: events only need to say "something happened"; a full queue already does.
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !matches!(ev.kind, notify::EventKind::Access(_))
            && ev.paths.iter().any(|p| p.file_name() == Some(&name))
        {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Wait until the file has been quiet for `debounce`.
            while let Ok(Some(())) = tokio::time::timeout(debounce, rx.recv()).await {}
            let r = reloader.clone();
            match tokio::task::spawn_blocking(move || r.reload("watch:file", false)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(
                    target: "sluice::reload",
                    error = %e,
                    "the changed config file is invalid; the running config stays"
                ),
                Err(e) => {
                    tracing::error!(target: "sluice::reload", error = %e, "reload task failed")
                }
            }
        }
    });
    Ok(Some(FileWatch {
        _watcher: watcher,
        task,
    }))
}

/// Poll the tenants generation every `every` and re-apply the database's tenants when it moved.
pub fn poll_tenants(reloader: Arc<Reloader>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let r = reloader.clone();
            match tokio::task::spawn_blocking(move || r.refresh_tenants()).await {
                Ok(Ok(true)) => {
                    tracing::info!(target: "sluice::reload", "tenants changed in the state database; applied")
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::error!(
                    target: "sluice::reload",
                    error = %e,
                    "tenants in the state database do not validate; the running config stays"
                ),
                Err(e) => {
                    tracing::error!(target: "sluice::reload", error = %e, "tenant poll failed")
                }
            }
        }
    })
}
