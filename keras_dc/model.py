"""The DeeperCluster training model: backbone, super-class head, routed sub-class heads.

A Keras functional model with inputs {"image", "route"} and outputs {"super", "sub"}
(logits) and "features" (the heads' input, from which the train step makes the
sub-class heads' gradients). During training the route is the example's true
super-class (docs/method.md: the sub-class loss uses the true super-class's head);
at inference a caller may route by the predicted super-class.
"""

from __future__ import annotations

import tensorflow as tf

import keras_dc  # noqa: F401  (selects the TensorFlow backend)
import keras

from keras_dc import head_groups, heads, optimizer as optimizer_lib
from keras_dc.head_groups import HeadLayout


class DeeperClusterModel(keras.Model):
    """Functional model with a custom train step computing both losses and top-1s.

    With a grouped `layout` (heads owned by groups of replicas) this replica's model holds only its
    group's sub-class heads, and its train step sums their gradients over the group alone.
    """

    def __init__(self, backbone: keras.Model, super_classes: int, sub_classes: int,
                 layout: HeadLayout | None = None, **kwargs):
        layout = layout or HeadLayout(super_classes)
        image = keras.Input(shape=backbone.input_shape[1:], name="image")
        route = keras.Input(shape=(), dtype="int32", name="route")
        features = keras.layers.ReLU(name="feature_relu")(backbone(image))
        super_logits = keras.layers.Dense(
            super_classes, name="super_head", dtype="float32",
            kernel_initializer=keras.initializers.RandomNormal(stddev=heads.HEAD_INIT_STDDEV))(features)
        sub_logits = heads.RoutedDense(layout.heads_per_group, sub_classes, first_head=layout.first_head,
                                       momentum_slots=layout.grouped, name="sub_heads",
                                       dtype="float32")([features, route])
        super().__init__(inputs={"image": image, "route": route},
                         outputs={"super": super_logits, "sub": sub_logits, "features": features}, **kwargs)
        self.backbone = backbone
        self.super_classes = super_classes
        self.sub_classes = sub_classes
        self.layout = layout
        self._trackers = {name: keras.metrics.Mean(name=name) for name in
                          ("loss", "super_loss", "sub_loss", "super_top1", "sub_top1", "full_top1")}

    @property
    def metrics(self):
        return list(self._trackers.values())

    @property
    def head_layers(self) -> list[keras.layers.Layer]:
        return [self.get_layer("super_head"), self.get_layer("sub_heads")]

    def train_step(self, data):
        """One SGD step with the reference's averaging (docs/method.md, "How gradients are averaged").

        The body and the super-class head get the batch mean of w * (CE_super + CE_sub); sub-class
        head j gets sum w_i * dCE_sub_i / n_j over the examples routed to it, n_j being the sum of
        their weights over the whole (all-replica) batch: its own mean, not n_j / B of it. That is B / n_j
        times the gradient of the batch mean, so one backward pass of it serves both: the heads' gradients
        are made from its gradient at their output, scaled per head (a second loss would run the body's
        backward pass, and its synchronised batch norm's collectives, a second time).
        """
        images, targets = data
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        batch = tf.cast(tf.shape(images)[0] * replicas, tf.float32)
        weights = tf.cast(targets["weight"], tf.float32)
        routes = tf.cast(targets["super"], tf.int32)
        head_scales = tf.math.divide_no_nan(batch, self._head_sizes(weights, routes))
        with tf.GradientTape() as tape:
            outputs = self({"image": images, "route": routes}, training=True)
            losses = self._per_example_losses(outputs, targets)
            loss = self.optimizer.scale_loss(tf.reduce_sum(weights * (losses["super"] + losses["sub"])) / batch)
        others = self._variables_by_loss()[1]
        *gradients, sub_gradient = tape.gradient(loss, [*others, outputs["sub"]])
        sub_gradient = sub_gradient * tf.gather(head_scales, routes - self.layout.first_head)[:, None]
        head_gradients = self.get_layer("sub_heads").gradients(outputs["features"], routes, sub_gradient)
        if self.layout.grouped:
            # The heads move once the backward pass no longer reads them (a write to a variable whose value
            # is still in use copies it), and the group collectives finish before the all-replica ones
            # start: one order on every replica.
            with tf.control_dependencies(gradients):
                updates = self._update_group_heads(head_gradients)
            with tf.control_dependencies(updates):
                gradients = [tf.identity(g) for g in gradients]
            self.optimizer.apply(gradients, others)
        else:
            by_variable = dict(zip(map(id, others), gradients))
            by_variable.update((id(variable), make()) for variable, make in head_gradients)
            self.optimizer.apply([by_variable[id(v)] for v in self.trainable_variables], self.trainable_variables)
        self._update_metrics(outputs, targets, losses)
        return {name: tracker.result() for name, tracker in self._trackers.items()}

    def _head_sizes(self, weights: tf.Tensor, routes: tf.Tensor) -> tf.Tensor:
        """Sum of the example weights routed to each head this replica holds, over the whole batch: over
        all replicas, or over the group's (the only ones that see those heads' examples)."""
        layout = self.layout
        local = tf.math.unsorted_segment_sum(weights, routes - layout.first_head, layout.heads_per_group)
        if layout.grouped:
            return head_groups.group_sum(local, layout, instance=0)
        return _all_replica_sum(local)

    def _update_group_heads(self, gradients: list) -> list:
        """torch's SGD step on this group's heads with their gradients summed over the group, one block of
        a head after the other: each block's gradient is made once the previous block has moved, so one
        block's gradient is alive at a time (and one order of collectives on every replica of the group)."""
        layer = self.get_layer("sub_heads")
        buffers = dict(zip(map(id, layer.trainable_variables), layer.momentums))
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        done: list = []
        for index, (variable, make) in enumerate(gradients):
            with tf.control_dependencies(done):
                summed = head_groups.group_sum(make(), self.layout, instance=index + 1)
                done = [optimizer_lib.torch_update(variable, buffers[id(variable)], summed, inner.learning_rate,
                                                   inner.momentum, inner.l2)]
        return done

    @property
    def optimized_variables(self) -> list:
        """What Keras' optimizer updates: every trainable variable, less a group's heads (the train step
        updates those itself, so that they are not all-reduced over every replica)."""
        return self._variables_by_loss()[1] if self.layout.grouped else self.trainable_variables

    def _variables_by_loss(self) -> tuple[list, list]:
        """The sub-class heads' trainable variables, and all the others (body and super-class head)."""
        sub_heads = self.get_layer("sub_heads").trainable_variables
        head_ids = {id(variable) for variable in sub_heads}
        return sub_heads, [v for v in self.trainable_variables if id(v) not in head_ids]

    @staticmethod
    def _per_example_losses(outputs, targets) -> dict:
        return {key: keras.losses.sparse_categorical_crossentropy(targets[key], outputs[key], from_logits=True)
                for key in ("super", "sub")}

    def _update_metrics(self, outputs, targets, losses) -> None:
        hits = {key: tf.cast(tf.equal(tf.argmax(outputs[key], axis=-1, output_type=tf.int32),
                                      tf.cast(targets[key], tf.int32)), tf.float32)
                for key in ("super", "sub")}
        self._trackers["super_loss"].update_state(losses["super"])
        self._trackers["sub_loss"].update_state(losses["sub"])
        self._trackers["loss"].update_state(losses["super"] + losses["sub"])
        self._trackers["super_top1"].update_state(hits["super"])
        self._trackers["sub_top1"].update_state(hits["sub"])
        self._trackers["full_top1"].update_state(hits["super"] * hits["sub"])


def _all_replica_sum(value: tf.Tensor) -> tf.Tensor:
    """`value` summed over all replicas (itself on one device)."""
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, value)


def reset_heads(model: DeeperClusterModel, seed: int, keep_super_head: bool = False) -> None:
    """Re-draws the heads and zeroes their optimizer slots (docs/method.md, cycle step 6).

    With `keep_super_head` (one super-cluster: its targets are the rotations, which never
    change) the super-class head and its momentum are kept, as the reference does.
    """
    for offset, layer in enumerate(model.head_layers):
        if keep_super_head and layer.name == "super_head":
            continue
        if isinstance(layer, heads.RoutedDense):
            layer.reinitialize(seed * 2 + offset)
        else:
            heads.reinitialize_dense(layer, seed * 2 + offset)
        slots = getattr(layer, "momentums", None) or [
            slot for variable in layer.trainable_weights for slot in optimizer_slots(model.optimizer, variable)]
        for slot in slots:
            slot.assign(tf.zeros_like(slot))


def optimizer_slots(optimizer: keras.optimizers.Optimizer, variable) -> list:
    """The optimizer state variables that belong to `variable` (momentum for SGD)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if not inner.built:
        return []
    # Private: Keras 3 has no public map from a variable to its slots (the slot lists follow the
    # order of the built variables, and only this method knows a variable's position).
    # tests/test_model.py::test_private_keras_apis_still_exist fails loudly if it changes.
    index = inner._get_variable_index(variable)
    slots = []
    for name in ("momentums", "_momentums", "_velocities", "velocities"):
        values = getattr(inner, name, None)
        if isinstance(values, list) and len(values) > index and values[index] is not None:
            slots.append(values[index])
    return slots
