//! Member offsets of kernel structs, read from the kernel's BTF (`/sys/kernel/btf/vmlinux`):
//! the programs have no CO-RE, so the agent tells them where a `struct cgroup` keeps its id and
//! hierarchy ([`CgroupLayout`]) and where a task keeps its tgid and argv ([`TaskLayout`]), and
//! checks the one offset compiled into the counter (the compat flag). A minimal reader of the BTF type section: only
//! struct members and the types needed to check their sizes.

use std::{fs, io, path::Path};

use recorder_ebpf::{CgroupLayout, TaskLayout};

/// Where the kernel exposes its BTF.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Why the layout could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file could not be read.
    #[error("reading {VMLINUX_BTF}")]
    Read(#[source] io::Error),
    /// The data is not BTF this reader understands.
    #[error("malformed kernel BTF: {0}")]
    Malformed(&'static str),
    /// A struct or member is missing, or not of the expected size.
    #[error("kernel BTF has no {0} of the expected size")]
    Missing(String),
    /// The compat flag is not where the counter program reads it.
    #[error(
        "this kernel keeps the compat-syscall flag at byte {found} of struct task_struct; the program reads byte {expected} (an agent built for this kernel's layout is needed)"
    )]
    CompatFlag {
        /// Where the kernel has it.
        found: u32,
        /// Where the program reads it.
        expected: u32,
    },
}

/// What the programs need from this kernel's BTF: the layouts, and whether the compat flag is
/// where the counter reads it.
#[derive(Debug)]
pub(super) struct Layouts {
    /// For the `cgroup_mkdir` program (optional).
    pub cgroup: Result<CgroupLayout, BtfError>,
    /// For the task programs (optional).
    pub task: Result<TaskLayout, BtfError>,
    /// The compat flag's place (required; `Ok` without BTF, where nothing can be checked).
    pub compat: Result<(), BtfError>,
}

/// Reads and parses the kernel's BTF once (several MiB: one read, dropped at once, so the
/// allocator gives the memory back) for everything the programs need from it.
pub(super) fn layouts() -> Layouts {
    let parsed = fs::read(Path::new(VMLINUX_BTF))
        .map_err(BtfError::Read)
        .and_then(|data| {
            let btf = Btf::parse(&data)?;
            Ok(Layouts {
                cgroup: cgroup_layout_of(&btf),
                task: task_layout_of(&btf),
                compat: compat_flag_of(&btf, std::env::consts::ARCH),
            })
        });
    parsed.unwrap_or_else(|err| {
        let again = || BtfError::Read(io::Error::other(err.to_string()));
        Layouts {
            cgroup: Err(again()),
            task: Err(again()),
            compat: Ok(()),
        }
    })
}

fn task_layout_of(btf: &Btf<'_>) -> Result<TaskLayout, BtfError> {
    Ok(TaskLayout {
        known: 1,
        task_tgid: btf.member_offset("task_struct", "tgid", 4)?,
        task_mm: btf.member_offset("task_struct", "mm", 8)?,
        mm_arg_start: btf.member_offset("mm_struct", "arg_start", 8)?,
        mm_arg_end: btf.member_offset("mm_struct", "arg_end", 8)?,
        binprm_filename: btf.member_offset("linux_binprm", "filename", 8)?,
    })
}

/// Checks that the compat flag the counter reads on every call is where this kernel keeps it
/// (the verifier would also refuse a read that is not inside `thread_info`, with a less
/// helpful message).
#[cfg(test)]
fn compat_flag_from(data: &[u8], arch: &str) -> Result<(), BtfError> {
    compat_flag_of(&Btf::parse(data)?, arch)
}

fn compat_flag_of(btf: &Btf<'_>, arch: &str) -> Result<(), BtfError> {
    let (expected, member, size) = match arch {
        "x86_64" => (recorder_ebpf::COMPAT_FLAG_OFFSET_X86_64, "status", 4),
        "aarch64" => (recorder_ebpf::COMPAT_FLAG_OFFSET_AARCH64, "flags", 8),
        _ => return Ok(()),
    };
    let info = btf
        .member_offset("task_struct", "thread_info", THREAD_INFO_SIZE.0)
        .or_else(|_| btf.member_offset("task_struct", "thread_info", THREAD_INFO_SIZE.1))?;
    let found = info + btf.member_offset("thread_info", member, size)?;
    if found == expected {
        Ok(())
    } else {
        Err(BtfError::CompatFlag { found, expected })
    }
}

/// `struct thread_info`'s size on x86_64 (flags, syscall_work, status, cpu) and aarch64.
const THREAD_INFO_SIZE: (u32, u32) = (24, 32);

#[cfg(test)]
fn layout_from(data: &[u8]) -> Result<CgroupLayout, BtfError> {
    cgroup_layout_of(&Btf::parse(data)?)
}

/// The offsets the `cgroup_mkdir` program needs.
fn cgroup_layout_of(btf: &Btf<'_>) -> Result<CgroupLayout, BtfError> {
    Ok(CgroupLayout {
        known: 1,
        cgroup_kn: btf.member_offset("cgroup", "kn", 8)?,
        cgroup_root: btf.member_offset("cgroup", "root", 8)?,
        kernfs_node_id: btf.member_offset("kernfs_node", "id", 8)?,
        root_hierarchy_id: btf.member_offset("cgroup_root", "hierarchy_id", 4)?,
        _pad: 0,
    })
}

/// One type: kind, name, `info` word, size-or-type word, and where its extra data starts.
#[derive(Clone, Copy, Debug)]
struct Type {
    kind: u32,
    name: u32,
    info: u32,
    size_or_type: u32,
    extra: usize,
}

impl Type {
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }

    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
}

struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Indexed by type id; id 0 is `void`.
    index: Vec<Type>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .and_then(|bytes| bytes.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or(BtfError::Malformed("truncated"))
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let magic = data
            .get(..2)
            .map(|bytes| u16::from_ne_bytes([bytes[0], bytes[1]]));
        if magic != Some(BTF_MAGIC) {
            return Err(BtfError::Malformed("bad magic"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let section = |off: usize| -> Result<&'a [u8], BtfError> {
            let start = hdr_len + u32_at(data, off)? as usize;
            let len = u32_at(data, off + 4)? as usize;
            data.get(start..start + len)
                .ok_or(BtfError::Malformed("section out of bounds"))
        };
        let types = section(8)?;
        let strings = section(16)?;
        let mut index = vec![Type {
            kind: 0,
            name: 0,
            info: 0,
            size_or_type: 0,
            extra: 0,
        }];
        let mut at = 0;
        while at < types.len() {
            let info = u32_at(types, at + 4)?;
            let ty = Type {
                kind: (info >> 24) & 0x1f,
                name: u32_at(types, at)?,
                info,
                size_or_type: u32_at(types, at + 8)?,
                extra: at + 12,
            };
            let vlen = ty.vlen();
            let extra = match ty.kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                0..=19 => 0,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            index.push(ty);
            at = ty.extra + extra;
        }
        Ok(Self {
            types,
            strings,
            index,
        })
    }

    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        rest.split(|&b| b == 0).next().unwrap_or_default()
    }

    fn get(&self, id: u32) -> Result<Type, BtfError> {
        self.index
            .get(id as usize)
            .copied()
            .ok_or(BtfError::Malformed("type id out of range"))
    }

    /// The size in bytes of type `id`, through typedefs and qualifiers; `None` for kinds whose
    /// size this reader does not need.
    fn size(&self, mut id: u32) -> Result<Option<u32>, BtfError> {
        for _ in 0..32 {
            let ty = self.get(id)?;
            match ty.kind {
                KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => {
                    return Ok(Some(ty.size_or_type));
                }
                KIND_PTR => return Ok(Some(8)),
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Ok(None),
            }
        }
        Err(BtfError::Malformed("type chain too long"))
    }

    /// The byte offset of `member` (`size` bytes) in the struct named `name`, also when it
    /// sits in an anonymous struct or union member.
    fn member_offset(&self, name: &str, member: &str, size: u32) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing(format!("struct {name} member {member}"));
        for ty in &self.index {
            if ty.kind == KIND_STRUCT
                && self.name(ty.name) == name.as_bytes()
                && let Some(bits) = self.find_member(*ty, member, size, 0)?
            {
                return if bits % 8 == 0 {
                    Ok(bits / 8)
                } else {
                    Err(missing())
                };
            }
        }
        Err(missing())
    }

    /// The bit offset of `member` in the struct or union `ty` that starts at bit `base`.
    fn find_member(
        &self,
        ty: Type,
        member: &str,
        size: u32,
        base: u32,
    ) -> Result<Option<u32>, BtfError> {
        for i in 0..ty.vlen() {
            let at = ty.extra + 12 * i;
            let name = u32_at(self.types, at)?;
            let member_type = u32_at(self.types, at + 4)?;
            let offset = u32_at(self.types, at + 8)?;
            let bits = base
                + if ty.kind_flag() {
                    offset & 0xff_ffff
                } else {
                    offset
                };
            if name == 0 {
                let mut inner = self.get(member_type)?;
                while matches!(inner.kind, KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST) {
                    inner = self.get(inner.size_or_type)?;
                }
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some(found) = self.find_member(inner, member, size, bits)?
                {
                    return Ok(Some(found));
                }
            } else if self.name(name) == member.as_bytes() && self.size(member_type)? == Some(size)
            {
                return Ok(Some(bits));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob built type by type, as the kernel lays it out.
    #[derive(Default)]
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                strings: vec![0],
                next_id: 1,
                ..Self::default()
            }
        }

        fn string(&mut self, s: &str) -> u32 {
            let at = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            at
        }

        fn push(&mut self, words: &[u32]) -> u32 {
            for word in words {
                self.types.extend_from_slice(&word.to_ne_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            let name = self.string(name);
            self.push(&[name, KIND_INT << 24, size, size * 8])
        }

        fn ptr(&mut self, to: u32) -> u32 {
            self.push(&[0, KIND_PTR << 24, to])
        }

        /// `members`: (name, type, bit offset); "" for an anonymous member.
        fn aggregate(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let name = self.string(name);
            let mut words = vec![name, kind << 24 | members.len() as u32, size];
            for &(member, ty, offset) in members {
                let member = if member.is_empty() {
                    0
                } else {
                    self.string(member)
                };
                words.extend([member, ty, offset]);
            }
            self.push(&words)
        }

        fn build(&self) -> Vec<u8> {
            let mut data = Vec::new();
            data.extend_from_slice(&BTF_MAGIC.to_ne_bytes());
            data.extend_from_slice(&[1, 0]);
            for word in [24, 0, self.types.len() as u32, self.types.len() as u32] {
                data.extend_from_slice(&word.to_ne_bytes());
            }
            data.extend_from_slice(&(self.strings.len() as u32).to_ne_bytes());
            data.extend_from_slice(&self.types);
            data.extend_from_slice(&self.strings);
            data
        }
    }

    fn kernel_like() -> Builder {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let u64_ = b.int("long long unsigned int", 8);
        let kn = b.aggregate(
            KIND_STRUCT,
            "kernfs_node",
            64,
            &[("count", int, 0), ("id", u64_, 256)],
        );
        let root = b.aggregate(
            KIND_STRUCT,
            "cgroup_root",
            64,
            &[("subsys_mask", int, 64), ("hierarchy_id", int, 96)],
        );
        let kn_ptr = b.ptr(kn);
        let root_ptr = b.ptr(root);
        let anon = b.aggregate(KIND_UNION, "", 8, &[("kn", kn_ptr, 0), ("other", int, 0)]);
        b.aggregate(
            KIND_STRUCT,
            "cgroup",
            512,
            &[
                ("level", int, 32),
                ("", anon, 1024),
                ("root", root_ptr, 2048),
            ],
        );
        b
    }

    #[test]
    fn reads_member_offsets_also_inside_anonymous_members() {
        let layout = layout_from(&kernel_like().build()).expect("layout");
        assert_eq!(
            layout,
            CgroupLayout {
                known: 1,
                cgroup_kn: 128,
                cgroup_root: 256,
                kernfs_node_id: 32,
                root_hierarchy_id: 12,
                _pad: 0,
            }
        );
    }

    #[test]
    fn a_member_of_another_size_or_a_missing_struct_is_an_error() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.aggregate(KIND_STRUCT, "kernfs_node", 8, &[("id", int, 0)]);
        let err = layout_from(&b.build()).expect_err("no cgroup");
        assert!(matches!(err, BtfError::Missing(_)), "{err}");
        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.aggregate(KIND_STRUCT, "kernfs_node", 8, &[("id", int, 0)]);
        assert!(matches!(
            Btf::parse(&b.build())
                .expect("parse")
                .member_offset("kernfs_node", "id", 8),
            Err(BtfError::Missing(_))
        ));
        assert!(matches!(
            layout_from(b"garbage!"),
            Err(BtfError::Malformed(_))
        ));
    }

    #[test]
    fn the_running_kernel_has_the_layout_when_it_has_btf() {
        if !Path::new(VMLINUX_BTF).exists() {
            return;
        }
        let layouts = layouts();
        let layout = layouts.cgroup.expect("layout from the running kernel");
        assert_eq!(layout.known, 1);
        assert_ne!(layout.kernfs_node_id, 0);
        let tasks = layouts.task.expect("task layout from the running kernel");
        assert!(tasks.task_tgid > 0 && tasks.mm_arg_end == tasks.mm_arg_start + 8);
        layouts
            .compat
            .expect("the compat flag where the program reads it");
    }

    #[test]
    fn a_compat_flag_elsewhere_is_refused() {
        let mut b = Builder::new();
        let u32_ = b.int("unsigned int", 4);
        let u64_ = b.int("long unsigned int", 8);
        let info = b.aggregate(
            KIND_STRUCT,
            "thread_info",
            24,
            &[("flags", u64_, 0), ("status", u32_, 64), ("cpu", u32_, 96)],
        );
        b.aggregate(KIND_STRUCT, "task_struct", 64, &[("thread_info", info, 0)]);
        let err = compat_flag_from(&b.build(), "x86_64").expect_err("status at 8");
        assert!(
            matches!(
                err,
                BtfError::CompatFlag {
                    found: 8,
                    expected: 16
                }
            ),
            "{err}"
        );
    }
}
