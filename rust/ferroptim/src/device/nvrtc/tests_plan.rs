//! The launch plan: every chunk once, in order, within the argument struct's limits.

use super::*;

/// Decodes a launch's struct: (tensor slot, chunk) per block and each slot's pointers.
fn decode(a: &Args) -> Vec<(Vec<u64>, i64, i32)> {
    let l = a.layout;
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&a.bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let base = 8 * (l.lists + 1) * l.max_tensors;
    (0..a.blocks)
        .map(|b| {
            let t = usize::from(a.bytes[base + 4 * MAX_BLOCKS + b]);
            assert!(t < l.max_tensors);
            let mut c = [0u8; 4];
            c.copy_from_slice(&a.bytes[base + 4 * b..base + 4 * b + 4]);
            let ptrs = (0..l.lists)
                .map(|k| word(8 * (k * l.max_tensors + t)))
                .collect();
            (
                ptrs,
                word(8 * (l.lists * l.max_tensors + t)) as i64,
                i32::from_le_bytes(c),
            )
        })
        .collect()
}

#[test]
fn launches_cover_every_chunk_once_in_order() {
    let layout = Layout::new(2, 9, Dtype::F32);
    assert!(layout.tensor_struct_bytes() + 9 * 4 <= 4096);
    // Empty tensors, many small ones, two-chunk ones, and one of 1526 chunks.
    let sizes: Vec<i64> = [0, 1, 70_000, 0]
        .into_iter()
        .chain((0..300).map(|i| 1 + (i * 7919) % 140_000))
        .chain([100_000_000, 5, 0])
        .collect();
    let members: Vec<(Vec<u64>, i64)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| ((0..4).map(|k| (i as u64) << 20 | k).collect(), n))
        .collect();
    let launches = plan(layout, &members);
    let mut seen: Vec<(Vec<u64>, i64, i32)> = Vec::new();
    for a in &launches {
        assert!(a.blocks >= 1 && a.blocks <= MAX_BLOCKS);
        assert!(a.tensors <= layout.max_tensors);
        seen.extend(decode(a));
    }
    let want: Vec<(Vec<u64>, i64, i32)> = members
        .iter()
        .filter(|m| m.1 > 0)
        .flat_map(|(p, n)| {
            (0..(*n as usize).div_ceil(CHUNK)).map(move |c| (p.clone(), *n, c as i32))
        })
        .collect();
    assert_eq!(seen, want);
    assert!(launches.len() > 1526 / MAX_BLOCKS);
}
