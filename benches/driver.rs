//! Criterion micro-benchmark of the driver: the time of one `ferroptim::step` call.
//!
//! It measures AdamW and SGD (momentum 0.9) steps, all tensors contiguous on the CPU (the fused
//! in-place path), on
//! - one tensor of 4M elements, float32 and bfloat16 (bandwidth-bound),
//! - 500 tensors × 4096 float32 (many medium tensors batched into one parallel region),
//! - 200 tensors × 256 float32 (mostly the fixed per-call and per-parameter cost).
//!
//! Throughput is the bytes moved per step: AdamW reads θ, g, m, v and writes θ, m, v (7 × the
//! element size per element); SGD with momentum reads θ, g, buf and writes θ, buf (5 ×).
//! Groups are built once, outside the timed closure; only `ferroptim::step` is timed.
//!
//! This bench is for catching regressions in the driver without Python in the way; the
//! comparison with torch.optim is `benches/bench_step.py`. Run it from the repository root with
//! libtorch from the torch wheel in the venv:
//!
//! ```sh
//! export VIRTUAL_ENV=$HOME/.cache/ferroptim/venv PATH=$HOME/.cache/ferroptim/venv/bin:$PATH \
//!     LIBTORCH_USE_PYTORCH=1 CARGO_TARGET_DIR=$HOME/.cache/ferroptim/target
//! export LD_LIBRARY_PATH=$VIRTUAL_ENV/lib/python3.11/site-packages/torch/lib
//! cargo bench -p ferroptim --bench driver
//! ```
//!
//! (`cargo bench` takes no `--release`: the bench profile inherits from release.) Criterion's usual
//! arguments follow `--`, e.g. `-- adamw` to run only the AdamW group. Sample counts and times
//! are kept small so a full run takes about a minute; on a noisy machine treat differences under
//! ~10 % as noise.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode};
use criterion::{measurement::WallTime, Throughput};
use ferroptim::{Adam, Group, ParamTensors, Rule, Sgd};
use tch::{Device, Kind, Tensor};

/// One benchmarked layout: `count` tensors of `numel` elements of dtype `kind`.
struct Case {
    name: &'static str,
    count: usize,
    numel: i64,
    kind: Kind,
}

const CASES: [Case; 4] = [
    Case {
        name: "1x4M/f32",
        count: 1,
        numel: 4 << 20,
        kind: Kind::Float,
    },
    Case {
        name: "1x4M/bf16",
        count: 1,
        numel: 4 << 20,
        kind: Kind::BFloat16,
    },
    Case {
        name: "500x4096/f32",
        count: 500,
        numel: 4096,
        kind: Kind::Float,
    },
    Case {
        name: "200x256/f32",
        count: 200,
        numel: 256,
        kind: Kind::Float,
    },
];

/// A group of `case`'s parameters for `rule`, with random θ and g, zero state, stepped once so
/// that the timed steps see non-fresh state (as every step after an optimizer's first).
fn build<R: Rule>(rule: R, case: &Case) -> Vec<Group<R>> {
    let opts = (case.kind, Device::Cpu);
    let n_state = rule.state_names().len();
    let n_scalar = rule.scalar_state_names().len();
    let params = (0..case.count)
        .map(|_| {
            let param = Tensor::randn([case.numel], opts);
            ParamTensors {
                grad: Tensor::randn([case.numel], opts),
                state: (0..n_state).map(|_| param.zeros_like()).collect(),
                scalar_state: (0..n_scalar)
                    .map(|_| Tensor::zeros([], (Kind::Float, Device::Cpu)))
                    .collect(),
                fresh: true,
                param,
            }
        })
        .collect();
    let mut groups = vec![Group { rule, params }];
    ferroptim::step(&mut groups).expect("first step on freshly built groups");
    for pt in groups.iter_mut().flat_map(|g| g.params.iter_mut()) {
        pt.fresh = false;
    }
    groups
}

/// Benchmarks `make()`'s rule on every case in `group`; `passes` is the number of element-sized
/// reads and writes per element per step.
fn bench_rule<R: Rule>(group: &mut BenchmarkGroup<'_, WallTime>, passes: u64, make: fn() -> R) {
    for case in &CASES {
        let elements = case.count as u64 * case.numel as u64;
        let bytes = elements * passes * case.kind.elt_size_in_bytes() as u64;
        let mut groups = build(make(), case);
        group.throughput(Throughput::Bytes(bytes));
        // Big single tensors take tens of ms a step: flat sampling keeps the run short.
        group.sampling_mode(if case.count == 1 {
            SamplingMode::Flat
        } else {
            SamplingMode::Auto
        });
        group.bench_function(case.name, |b| {
            b.iter(|| ferroptim::step(&mut groups).expect("step"));
        });
    }
}

fn configure<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group
}

fn adamw(c: &mut Criterion) {
    let mut group = configure(c, "adamw");
    bench_rule(&mut group, 7, Adam::adamw);
    group.finish();
}

fn sgd_momentum(c: &mut Criterion) {
    let mut group = configure(c, "sgd_momentum");
    bench_rule(&mut group, 5, || Sgd {
        momentum: 0.9,
        ..Sgd::default()
    });
    group.finish();
}

criterion_group!(benches, adamw, sgd_momentum);
criterion_main!(benches);
