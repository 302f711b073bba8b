"""Sub-class heads owned by groups of replicas: DeeperCluster's own distribution (docs/scaling.md).

The R replicas are split into G groups of P = R / G consecutive replicas; group g owns the S / G
sub-class heads [g S / G, (g + 1) S / G). A replica holds only its group's heads and their momentum,
reads only images whose super-class its group owns, and sums its heads' gradients over its group
with a TensorFlow collective whose group key is the group's, so that no head is ever all-reduced
across groups. The body and the super-class head stay mirrored over all replicas. With G = 1 every
replica owns every head: the replicated layout, which trains exactly as before groups existed.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

AUTO = "auto"
# TensorFlow's strategies number their own collective groups from 1; the head groups' keys start far
# above them so that the two never meet. Each group has its own key, each tensor its own instance key.
GROUP_KEY_BASE = 1_000_000


class GroupError(ValueError):
    """--head_groups does not fit the heads or the replicas."""


@dataclasses.dataclass(frozen=True)
class HeadLayout:
    """Which heads this replica owns: group `group` of `groups`, position `rank` of `group_size`."""

    heads: int
    groups: int = 1
    group: int = 0
    rank: int = 0
    group_size: int = 1

    @property
    def heads_per_group(self) -> int:
        return self.heads // self.groups

    @property
    def first_head(self) -> int:
        return self.group * self.heads_per_group

    @property
    def owned(self) -> range:
        """Global indices of the heads (super-classes) this replica's group owns."""
        return range(self.first_head, self.first_head + self.heads_per_group)

    @property
    def grouped(self) -> bool:
        return self.groups > 1


def valid_groups(heads: int, replicas: int) -> list[int]:
    """Every G that divides both the S heads and the replicas, smallest first."""
    return [groups for groups in range(1, math.gcd(heads, replicas) + 1)
            if heads % groups == 0 and replicas % groups == 0]


def parse(value: str, heads: int) -> int | None:
    """The G of --head_groups=`value` (None for `auto`); a GroupError unless it is a positive
    divisor of the S heads."""
    if value == AUTO:
        return None
    try:
        groups = int(value)
    except ValueError:
        raise GroupError(f"must be a positive integer or {AUTO}, got {value!r}") from None
    if groups < 1 or heads % groups:
        raise GroupError(f"{groups} groups must be a positive divisor of the S={heads} sub-class heads")
    return groups


def resolve(value: str, heads: int, replicas: int) -> int:
    """The number of groups that --head_groups=`value` asks for: an integer, or `auto` for the largest
    valid one. Raises GroupError (naming the numbers) when G does not divide S and the replicas."""
    groups = parse(value, heads)
    if groups is None:
        return valid_groups(heads, replicas)[-1]
    if replicas % groups:
        raise GroupError(f"{groups} groups must divide both the S={heads} sub-class heads and the {replicas} "
                         f"replicas; valid: {', '.join(map(str, valid_groups(heads, replicas)))} (or {AUTO})")
    return groups


def layout(heads: int, groups: int, replica: int, replicas: int) -> HeadLayout:
    """The layout of replica `replica` of `replicas` when `groups` groups share `heads` heads."""
    size = replicas // groups
    return HeadLayout(heads=heads, groups=groups, group=replica // size, rank=replica % size, group_size=size)


def group_sum(value: tf.Tensor, layout_: HeadLayout, instance: int) -> tf.Tensor:
    """`value` summed over the replicas of this replica's group (itself alone in a group of one).

    Every replica of the group must call it with the same `instance` number for the same tensor.
    """
    if layout_.group_size == 1:
        return value
    return tf.raw_ops.CollectiveReduceV2(
        input=value, group_size=layout_.group_size, group_key=GROUP_KEY_BASE + layout_.group,
        instance_key=instance + 1, ordering_token=[], merge_op="Add", final_op="Id")
