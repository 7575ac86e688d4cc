//! Who owns a job, and who may act on it.
//!
//! A job belongs to the uid that owns the file dropped into `spool/incoming/` (the kernel sets
//! a file's owner at creation and only root may change it, so it cannot be forged by a member).
//! That uid's groups are looked up in the system's user database (`getpwuid_r`,
//! `getgrouplist`, so /etc/passwd, /etc/group or whatever NSS is set up) when the job is taken
//! in, and recorded with the job.
//!
//! Submitting is open to members of the submit group (`submit_group` in the config, by default
//! `reelspool-submit`), to root and to the service user (the daemon's own uid). Acting on a job
//! (cancel, its details, its worker log) is open to its owner, root and the service user.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use jobs::access::{self, Person};
use jobs::JobSpec;

/// How long a looked-up person or group is reused before the user database is read again.
const CACHE_FOR: Duration = Duration::from_secs(5);

/// The rules of one daemon: its submit group and its own uid.
pub struct Policy {
    submit_group: String,
    service_uid: u32,
    people: Mutex<HashMap<u32, (Instant, Person)>>,
    group: Mutex<Option<(Instant, Option<u32>)>>,
}

impl Policy {
    pub fn new(submit_group: &str) -> Policy {
        Policy {
            submit_group: submit_group.to_string(),
            // SAFETY: geteuid cannot fail and touches no memory.
            service_uid: unsafe { libc::geteuid() },
            people: Mutex::new(HashMap::new()),
            group: Mutex::new(None),
        }
    }

    pub fn submit_group(&self) -> &str {
        &self.submit_group
    }

    /// The person behind `uid`, with their groups.
    pub fn person(&self, uid: u32) -> Person {
        let mut people = self
            .people
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, person)) = people.get(&uid) {
            if at.elapsed() < CACHE_FOR {
                return person.clone();
            }
        }
        let person = look_up(uid);
        people.insert(uid, (Instant::now(), person.clone()));
        person
    }

    fn submit_gid(&self) -> Option<u32> {
        let mut group = self
            .group
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, gid)) = *group {
            if at.elapsed() < CACHE_FOR {
                return gid;
            }
        }
        let gid = group_id(&self.submit_group);
        *group = Some((Instant::now(), gid));
        gid
    }

    /// Root or the service user: may do anything to any job.
    pub fn is_privileged(&self, person: &Person) -> bool {
        person.uid == 0 || person.uid == self.service_uid
    }

    /// Whether `person` may submit jobs; the refusal says why not.
    pub fn may_submit(&self, person: &Person) -> Result<(), String> {
        if self.is_privileged(person) {
            return Ok(());
        }
        match self.submit_gid() {
            Some(gid) if person.gids.contains(&gid) => Ok(()),
            Some(_) => Err(format!(
                "{person} is not a member of group `{}`, so may not submit jobs",
                self.submit_group
            )),
            None => Err(format!(
                "{person} may not submit jobs: group `{}` does not exist on this machine",
                self.submit_group
            )),
        }
    }

    /// Whether `person` may act on (cancel, read the details of) a job owned by `owner`.
    /// Jobs from before owners were recorded belong to root and the service user only.
    pub fn may_act_on(&self, person: &Person, owner: Option<&Person>) -> bool {
        self.is_privileged(person) || owner.is_some_and(|owner| owner.uid == person.uid)
    }
}

/// The owner of a claimed job file, if they may submit; otherwise the refusal for the
/// `.error` file.
pub fn owner_of(policy: &Policy, claim: &Path, shown_path: &Path) -> Result<Person, String> {
    let meta = std::fs::symlink_metadata(claim)
        .map_err(|err| format!("error: cannot read {}: {err}", shown_path.display()))?;
    let person = policy.person(meta.uid());
    policy.may_submit(&person).map_err(|refusal| {
        format!(
            "error: {}: {refusal}\n  = help: an administrator adds members with `usermod -aG {} NAME`",
            shown_path.display(),
            policy.submit_group()
        )
    })?;
    Ok(person)
}

/// Checks a job's inputs and output against its owner's rights.
pub fn check_paths(owner: &Person, spec: &JobSpec, shown_path: &Path) -> Result<(), String> {
    let help = "  = help: a job reads and writes with the rights of whoever submitted it; \
                the path must be open to them, not only to the service";
    for (key, path) in [
        ("inputs.image", &spec.inputs.image),
        ("inputs.audio", &spec.inputs.audio),
    ] {
        access::check_read(owner, path)
            .map_err(|err| format!("error: {}: {key}: {err}\n{help}", shown_path.display()))?;
    }
    access::check_write(owner, &spec.output.path).map_err(|err| {
        format!(
            "error: {}: output.path: {err}\n{help}",
            shown_path.display()
        )
    })
}

/// Reads the user database for `uid`; a uid without an entry is a person with no groups.
pub fn look_up(uid: u32) -> Person {
    let Some((name, primary_gid)) = passwd_entry(uid) else {
        return Person {
            uid,
            name: uid.to_string(),
            gids: Vec::new(),
        };
    };
    let gids = group_list(&name, primary_gid).unwrap_or_else(|| vec![primary_gid]);
    Person { uid, name, gids }
}

fn passwd_entry(uid: u32) -> Option<(String, u32)> {
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: an all-zero passwd is a valid value for getpwuid_r to fill in.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call, and `buf` for `buf.len()` bytes.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut entry, buf.as_mut_ptr(), buf.len(), &mut result) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() || entry.pw_name.is_null() {
            return None;
        }
        // SAFETY: getpwuid_r succeeded, so pw_name points at a NUL-terminated string in `buf`.
        let name = unsafe { CStr::from_ptr(entry.pw_name) }
            .to_string_lossy()
            .into_owned();
        return Some((name, entry.pw_gid));
    }
}

fn group_list(name: &str, primary_gid: u32) -> Option<Vec<u32>> {
    let c_name = CString::new(name).ok()?;
    let mut count: libc::c_int = 64;
    loop {
        let mut groups: Vec<libc::gid_t> = vec![0; usize::try_from(count).ok()?];
        let mut found = count;
        // SAFETY: `groups` holds `found` elements; getgrouplist writes at most that many and
        // stores the real number in `found`.
        let rc = unsafe {
            libc::getgrouplist(
                c_name.as_ptr(),
                primary_gid,
                groups.as_mut_ptr(),
                &mut found,
            )
        };
        if rc >= 0 {
            groups.truncate(usize::try_from(found).ok()?);
            return Some(groups);
        }
        if found <= count || count > 1 << 16 {
            return None;
        }
        count = found;
    }
}

/// The gid of the group called `name`, if there is one.
pub fn group_id(name: &str) -> Option<u32> {
    let c_name = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: an all-zero group is a valid value for getgrnam_r to fill in.
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call, and `buf` for `buf.len()` bytes.
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut entry,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() {
            return None;
        }
        return Some(entry.gr_gid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_in_the_user_database_with_group_root() {
        let root = look_up(0);
        assert_eq!(root.name, "root");
        assert!(root.gids.contains(&0), "{:?}", root.gids);
        assert_eq!(group_id("root"), Some(0));
    }

    #[test]
    fn a_uid_without_an_entry_has_no_groups() {
        let nobody_known = look_up(3_999_999_917);
        assert_eq!(nobody_known.name, "3999999917");
        assert!(nobody_known.gids.is_empty());
        assert_eq!(group_id("reelspool-no-such-group-x"), None);
    }

    #[test]
    fn outsiders_are_refused_with_the_group_named() {
        let policy = Policy::new("reelspool-no-such-group-x");
        let stranger = Person {
            uid: 3_999_999_917,
            name: "mallory".into(),
            gids: vec![3_999_999_917],
        };
        let refusal = policy.may_submit(&stranger).expect_err("not a member");
        assert!(refusal.contains("reelspool-no-such-group-x"), "{refusal}");
        assert!(policy.may_submit(&look_up(0)).is_ok(), "root may submit");
        assert!(!policy.may_act_on(&stranger, None));
        assert!(policy.may_act_on(&stranger, Some(&stranger.clone())));
    }
}
