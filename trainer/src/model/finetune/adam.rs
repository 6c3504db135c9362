//! Adam (Kingma & Ba; PyTorch's `torch.optim.Adam` without weight decay or amsgrad),
//! written out so that its state (m, v, step) can be checkpointed: tch's optimizer
//! wraps libtorch's and exposes no state to save or restore.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

/// Adam's hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// One trained variable and its moment estimates (same shape, device and dtype).
#[derive(Debug)]
struct Slot {
    param: Tensor,
    m: Tensor,
    v: Tensor,
}

/// Adam over named variables; the names key the checkpointed state, so the order
/// of updates (sorted by name) and the state survive a restart exactly.
#[derive(Debug)]
pub struct Adam {
    cfg: AdamConfig,
    slots: BTreeMap<String, Slot>,
    step: u64,
}

impl Adam {
    /// `params`: the variables to train (they must require grad), by unique name.
    pub fn new(cfg: AdamConfig, params: impl IntoIterator<Item = (String, Tensor)>) -> Self {
        let slots = params
            .into_iter()
            .map(|(name, param)| {
                let m = param.zeros_like().detach();
                let v = param.zeros_like().detach();
                (name, Slot { param, m, v })
            })
            .collect();
        Adam {
            cfg,
            slots,
            step: 0,
        }
    }

    /// Sets the learning rate of the next steps (a schedule's value for this step).
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    pub fn config(&self) -> AdamConfig {
        self.cfg
    }

    /// Updates taken so far (PyTorch's `state['step']`, shared by all variables).
    pub fn steps(&self) -> u64 {
        self.step
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Sets every variable's gradient to zero (variables without one are skipped).
    pub fn zero_grad(&mut self) {
        for s in self.slots.values_mut() {
            let mut g = s.param.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// Whether every defined gradient is finite (for loss scaling).
    pub fn grads_finite(&self) -> bool {
        // One read for all gradients: each read waits for the GPU.
        tch::no_grad(|| {
            let flags: Vec<Tensor> = self
                .slots
                .values()
                .map(|s| s.param.grad())
                .filter(Tensor::defined)
                .map(|g| g.isfinite().all().view([1]))
                .collect();
            flags.is_empty() || Tensor::cat(&flags, 0).all().int64_value(&[]) != 0
        })
    }

    /// Multiplies every gradient by `factor` (undoing a loss scale).
    pub fn scale_grads(&mut self, factor: f64) {
        tch::no_grad(|| {
            for s in self.slots.values_mut() {
                let mut g = s.param.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(factor);
                }
            }
        })
    }

    /// One Adam update from the current gradients; variables whose gradient is
    /// undefined (not reached by this loss, e.g. another subject's fMRI map) keep
    /// their value and moments, as in PyTorch.
    pub fn step(&mut self) {
        self.step += 1;
        let t = self.step as i32;
        let AdamConfig {
            lr,
            beta1,
            beta2,
            eps,
        } = self.cfg;
        let bias1 = 1.0 - beta1.powi(t);
        let bias2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        tch::no_grad(|| {
            for s in self.slots.values_mut() {
                let g = s.param.grad();
                if !g.defined() {
                    continue;
                }
                let g = g.to_kind(s.m.kind());
                let _ = s.m.g_mul_scalar_(beta1);
                let _ = s.m.g_add_(&(&g * (1.0 - beta1)));
                let _ = s.v.g_mul_scalar_(beta2);
                let _ = s.v.g_add_(&(&g * &g * (1.0 - beta2)));
                let denom = s.v.sqrt() / bias2_sqrt + eps;
                let update = (&s.m / denom) * (lr / bias1);
                let _ = s.param.g_sub_(&update);
            }
        });
    }

    /// The state as named tensors: `m.<name>`, `v.<name>` (detached, same device).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.slots.len());
        for (name, s) in &self.slots {
            out.push((format!("m.{name}"), s.m.shallow_clone()));
            out.push((format!("v.{name}"), s.v.shallow_clone()));
        }
        out
    }

    /// Restores what `state_tensors` and `steps` saved. Every variable's moments must be
    /// present with the right shape; the error names the first that is not.
    pub fn load_state(
        &mut self,
        step: u64,
        tensors: &BTreeMap<String, Tensor>,
    ) -> Result<(), String> {
        for (name, s) in self.slots.iter_mut() {
            for (key, dst) in [
                (format!("m.{name}"), &mut s.m),
                (format!("v.{name}"), &mut s.v),
            ] {
                let src = tensors
                    .get(&key)
                    .ok_or_else(|| format!("optimizer state {key} is missing"))?;
                if src.size() != dst.size() {
                    return Err(format!(
                        "optimizer state {key} has shape {:?}, the variable {:?}",
                        src.size(),
                        dst.size()
                    ));
                }
                tch::no_grad(|| dst.copy_(&src.to_kind(Kind::Float)));
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two steps on f(p) = sum(p^2) against the closed form of PyTorch's Adam.
    #[test]
    fn matches_the_textbook_update() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let cfg = AdamConfig {
            lr: 0.1,
            ..AdamConfig::default()
        };
        let mut adam = Adam::new(cfg, [("p".to_string(), p.shallow_clone())]);
        let mut expected = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for t in 1..=2 {
            adam.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            adam.step();
            for i in 0..2 {
                let g = 2.0 * expected[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = (v[i] / (1.0 - 0.999f64.powi(t))).sqrt();
                expected[i] -= 0.1 * mh / (vh + 1e-8);
            }
        }
        for (i, e) in expected.iter().enumerate() {
            let got = p.double_value(&[i as i64]);
            assert!((got - e).abs() < 1e-5, "p[{i}] = {got}, expected {e}");
        }
        assert_eq!(adam.steps(), 2);
    }

    /// With `image_tap`, layers after the tap are in the optimizer but never reached by
    /// the loss: their gradient stays undefined and they must come out untouched.
    #[test]
    fn variables_without_a_gradient_are_left_alone() {
        let used = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let unused = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
        let mut adam = Adam::new(
            AdamConfig::default(),
            [
                ("used".to_string(), used.shallow_clone()),
                ("unused".to_string(), unused.shallow_clone()),
            ],
        );
        for _ in 0..2 {
            adam.zero_grad();
            (&used * &used).sum(Kind::Float).backward();
            assert!(!unused.grad().defined());
            assert!(adam.grads_finite());
            adam.scale_grads(1.0);
            adam.step();
        }
        assert_eq!(Vec::<f32>::try_from(&unused).unwrap(), vec![3.0, 4.0]);
        assert_ne!(Vec::<f32>::try_from(&used).unwrap(), vec![1.0, -2.0]);
        let state: BTreeMap<String, Tensor> = adam.state_tensors().into_iter().collect();
        for k in ["m.unused", "v.unused"] {
            assert_eq!(
                state[k].abs().sum(Kind::Float).double_value(&[]),
                0.0,
                "{k}"
            );
        }
        assert!(state["m.used"].abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
