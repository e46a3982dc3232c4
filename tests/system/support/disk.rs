//! A small real disk under a node's data dir: an ext4 file system in an
//! image file, on a loop device, mounted with `errors=remount-ro`. A test
//! fills it (ENOSPC), or makes the kernel turn it read-only as it does after
//! a disk error (ext4's `trigger_fs_error`), under the running node.
//!
//! It needs root (losetup, mount), as the partition tests do: CI runs as
//! root. Without it the test fails, saying so; it never skips.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

pub struct SmallDisk {
    /// Where the file system is mounted.
    pub mount: PathBuf,
    /// The loop device's name (`loop3`).
    device: String,
    _image: tempfile::TempDir,
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e} (the disk tests need e2fsprogs and util-linux)")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\nthe disk tests need root (loop devices and mount)",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The line of /proc/mounts for `mount`, if it is mounted.
fn mount_line(mount: &Path) -> Option<String> {
    let mount = mount.to_str().unwrap();
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(mount))
        .map(str::to_owned)
}

impl SmallDisk {
    /// Makes a file system of `mib` MiB and mounts it at `mount` (created
    /// if needed).
    pub fn mount_at(mount: &Path, mib: u64) -> SmallDisk {
        let image_dir = tempfile::tempdir().unwrap();
        let image = image_dir.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        // No blocks reserved for root: the node runs as root in CI.
        run("mkfs.ext4", &["-q", "-m", "0", image.to_str().unwrap()]);
        std::fs::create_dir_all(mount).unwrap();
        run(
            "mount",
            &[
                "-o",
                "loop,errors=remount-ro",
                image.to_str().unwrap(),
                mount.to_str().unwrap(),
            ],
        );
        let line = mount_line(mount).expect("mounted");
        let device = line
            .split(' ')
            .next()
            .and_then(|d| d.strip_prefix("/dev/"))
            .expect("a loop device")
            .to_owned();
        SmallDisk {
            mount: mount.to_owned(),
            device,
            _image: image_dir,
        }
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }

    /// Writes a file until the file system is full.
    pub fn fill(&self) {
        let mut file = std::fs::File::create(self.filler()).unwrap();
        let block = vec![0u8; 64 << 10];
        loop {
            if let Err(e) = file.write_all(&block).and_then(|()| file.sync_all()) {
                assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
                break;
            }
        }
        // The last partial block too.
        while file
            .write_all(&[0u8; 512])
            .and_then(|()| file.sync_all())
            .is_ok()
        {}
    }

    /// Removes what `fill` wrote.
    pub fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }

    /// Makes the kernel record an error on the file system, which
    /// `errors=remount-ro` turns into a read-only file system at once, open
    /// files included: what a failing disk does under a running node.
    pub fn turn_read_only(&self) {
        std::fs::write(
            format!("/sys/fs/ext4/{}/trigger_fs_error", self.device),
            "flotilla disk test",
        )
        .unwrap();
        let line = mount_line(&self.mount).expect("still mounted");
        let options = line.split(' ').nth(3).unwrap_or_default();
        assert!(
            options.split(',').any(|o| o == "ro" || o == "emergency_ro"),
            "the file system did not turn read-only: {line}"
        );
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a node still holding files must not keep the mount (the
        // loop device goes with it, `mount -o loop` set it to autoclear).
        let _ = Command::new("umount")
            .args(["-l", self.mount.to_str().unwrap()])
            .status();
    }
}
