//! Deterministic data parallelism: work is split into fixed pieces and every output
//! element is computed by exactly one thread with a fixed operation order, so results
//! do not depend on the number of threads.

use std::ops::Range;

pub(crate) fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 32)
}

/// Splits 0..n into at most `parts` contiguous, nearly equal ranges.
pub(crate) fn split(n: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts)
        .map(|k| (k * n / parts)..((k + 1) * n / parts))
        .filter(|r| !r.is_empty())
        .collect()
}

/// Calls `f(row, row_slice)` for every row of a row-major [n_rows, ncols] buffer, rows
/// split into contiguous blocks, one thread per block. Returns the error of the lowest
/// failing block, if any.
pub(crate) fn for_rows<E, F>(data: &mut [f32], ncols: usize, f: F) -> Result<(), E>
where
    E: Send,
    F: Fn(usize, &mut [f32]) -> Result<(), E> + Sync,
{
    let n_rows = data.len().checked_div(ncols).unwrap_or(0);
    let ranges = split(n_rows, threads());
    let mut blocks: Vec<(Range<usize>, &mut [f32])> = Vec::with_capacity(ranges.len());
    let mut rest = data;
    for r in ranges {
        let (head, tail) = rest.split_at_mut(r.len() * ncols);
        blocks.push((r, head));
        rest = tail;
    }
    let run = |(r, block): (Range<usize>, &mut [f32])| -> Result<(), E> {
        for (k, i) in r.enumerate() {
            f(i, &mut block[k * ncols..(k + 1) * ncols])?;
        }
        Ok(())
    };
    if blocks.len() <= 1 {
        return blocks.into_iter().try_for_each(run);
    }
    let results: Vec<Result<(), E>> = std::thread::scope(|s| {
        let handles: Vec<_> = blocks
            .into_iter()
            .map(|b| {
                let run = &run;
                s.spawn(move || run(b))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    results.into_iter().collect()
}

/// Runs `f` on every job, jobs split into contiguous groups, one thread per group.
pub(crate) fn run_jobs<J, F>(jobs: Vec<J>, f: F)
where
    J: Send,
    F: Fn(J) + Sync,
{
    let ranges = split(jobs.len(), threads());
    if ranges.len() <= 1 {
        jobs.into_iter().for_each(f);
        return;
    }
    let mut groups: Vec<Vec<J>> = Vec::with_capacity(ranges.len());
    let mut it = jobs.into_iter();
    for r in ranges {
        groups.push(it.by_ref().take(r.len()).collect());
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|g| {
                let f = &f;
                s.spawn(move || g.into_iter().for_each(f))
            })
            .collect();
        for h in handles {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_everything_once() {
        for n in [0, 1, 5, 64, 1001] {
            for p in [1, 2, 3, 16] {
                let r = split(n, p);
                let total: usize = r.iter().map(|r| r.len()).sum();
                assert_eq!(total, n);
                for w in r.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
            }
        }
    }
}
