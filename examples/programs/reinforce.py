"""REINFORCE: a policy-gradient agent (in the style of the PyTorch
`reinforcement_learning/reinforce.py` example) balancing a cart-pole whose
dynamics are written in numpy (the classic Barto/Sutton/Anderson equations,
as in gym's CartPole-v1), so nothing needs to be installed.

Python features exercised:
  * an environment implemented in numpy and stepped from Python
  * variable-length episodes (the episode ends when the pole falls, the cart
    leaves the track, or a step limit is hit), so the number of forward
    passes and of saved log-probabilities differs from iteration to iteration
  * `torch.distributions.Categorical` sampling and `action.item()` to feed the
    chosen action back to the environment
  * discounted returns computed in a Python loop, then normalised in torch
"""
import argparse
import math
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Categorical

SIZES = {
    "small": dict(hidden=64, max_steps=100, lr=1e-2),
    "large": dict(hidden=1024, max_steps=500, lr=1e-3),
}
GAMMA = 0.99
EPS = np.finfo(np.float32).eps.item()


class CartPoleEnv:
    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    theta_threshold = 12 * 2 * math.pi / 360
    x_threshold = 2.4

    def __init__(self, rng, max_steps):
        self.rng, self.max_steps = rng, max_steps
        self.total_mass = self.masspole + self.masscart
        self.polemass_length = self.masspole * self.length

    def reset(self):
        self.state, self.t = self.rng.uniform(-0.05, 0.05, size=4), 0
        return self.state.astype(np.float32)

    def step(self, action):
        x, x_dot, theta, theta_dot = self.state
        force = self.force_mag if action == 1 else -self.force_mag
        costheta, sintheta = np.cos(theta), np.sin(theta)
        temp = (force + self.polemass_length * theta_dot ** 2 * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * costheta ** 2 / self.total_mass))
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        x, x_dot = x + self.tau * x_dot, x_dot + self.tau * xacc
        theta, theta_dot = theta + self.tau * theta_dot, theta_dot + self.tau * thetaacc
        self.state, self.t = np.array([x, x_dot, theta, theta_dot]), self.t + 1
        fell = abs(x) > self.x_threshold or abs(theta) > self.theta_threshold
        return self.state.astype(np.float32), 1.0, bool(fell or self.t >= self.max_steps)


class Policy(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.affine1 = nn.Linear(4, hidden)
        self.dropout = nn.Dropout(p=0.1)
        self.affine2 = nn.Linear(hidden, 2)

    def forward(self, x):
        x = F.relu(self.dropout(self.affine1(x)))
        return F.softmax(self.affine2(x), dim=1)


def select_action(policy, state, device, log_probs):
    state = torch.from_numpy(state).float().unsqueeze(0).to(device)
    probs = policy(state)
    m = Categorical(probs)
    action = m.sample()
    log_probs.append(m.log_prob(action))
    return action.item()


def finish_episode(optimizer, log_probs, rewards, device):
    R, returns = 0.0, []
    for r in reversed(rewards):
        R = r + GAMMA * R
        returns.insert(0, R)
    returns = torch.tensor(returns, device=device)
    returns = (returns - returns.mean()) / (returns.std() + EPS)
    policy_loss = torch.cat([-lp * R for lp, R in zip(log_probs, returns)]).sum()
    optimizer.zero_grad()
    policy_loss.backward()
    optimizer.step()
    return policy_loss.item()


def train(policy, optimizer, env, iters, device):
    running_reward = 10.0
    for episode in range(iters):
        state, ep_reward, log_probs, rewards = env.reset(), 0.0, [], []
        done = False
        while not done:
            action = select_action(policy, state, device, log_probs)
            state, reward, done = env.step(action)
            rewards.append(reward)
            ep_reward += reward
        running_reward = 0.05 * ep_reward + (1 - 0.05) * running_reward
        loss = finish_episode(optimizer, log_probs, rewards, device)
        print(f"iter {episode} steps {len(rewards)} reward {ep_reward:.1f} "
              f"loss {loss:.4f} running_reward {running_reward:.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20, help="number of episodes")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default="small", choices=["small", "large"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    cfg = SIZES[args.size]
    device = torch.device(args.device)
    env = CartPoleEnv(np.random.RandomState(args.seed), cfg["max_steps"])
    policy = Policy(cfg["hidden"]).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg["lr"])
    if args.compile:
        policy = torch.compile(policy)
    train(policy, optimizer, env, args.iters, device)


if __name__ == "__main__":
    main()
