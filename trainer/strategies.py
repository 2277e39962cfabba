"""tf.distribute strategies for the trainer: default, mirrored, multi-worker mirrored, TPU.

`--cpu_replicas=N` splits the host CPU into N logical devices before TensorFlow starts, so
a mirrored run on a machine without accelerators still has N replicas (how multi-replica
code is tested on CPU). Multi-worker runs read the cluster from `TF_CONFIG`; only the
chief writes to `model_dir` (`write_dir` gives the other workers a private temporary
folder, as Orbit's examples do).

Example:
>>> configure_cpu_replicas(2)   # before any TensorFlow op runs
>>> strategy = create_strategy("mirrored")
>>> strategy.num_replicas_in_sync
2
"""

import tempfile

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "tpu")


def configure_cpu_replicas(count: int) -> None:
    """Splits the first physical CPU into `count` logical CPUs (`count` <= 1: no change).

    Raises:
        RuntimeError: when TensorFlow has already initialized its devices.
    """
    if count <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])


def create_strategy(name: str, tpu_address: str = "") -> tf.distribute.Strategy:
    """The strategy `name` (one of `STRATEGIES`).

    `mirrored` uses every GPU, else every logical CPU (see `configure_cpu_replicas`).
    `multi_worker_mirrored` reads the cluster from `TF_CONFIG`. `tpu` connects to
    `tpu_address` (a name or grpc:// address; empty = the local or Cloud TPU VM) and
    initializes the TPU system.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"Unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}.")


def task_info(strategy: tf.distribute.Strategy):
    """(task_type, task_id) of this process; (None, 0) outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, 0
    return resolver.task_type, resolver.task_id or 0


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, summaries and exports to `model_dir`."""
    task_type, task_id = task_info(strategy)
    if task_type is None or task_type == "chief":
        return True
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Worker processes taking part in training (1 outside a multi-worker cluster)."""
    task_type, _ = task_info(strategy)
    if task_type is None or isinstance(strategy, tf.distribute.TPUStrategy):
        return 1
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def write_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """`model_dir` for the chief; a private temporary folder for every other worker.

    Non-chief workers must still write (checkpoint saving takes part in collectives),
    but their files are thrown away.
    """
    if is_chief(strategy):
        return model_dir
    task_type, task_id = task_info(strategy)
    return tempfile.mkdtemp(prefix=f"axial_keras_{task_type}_{task_id}_")


def describe(strategy: tf.distribute.Strategy) -> str:
    """A one-line description for logs."""
    task_type, task_id = task_info(strategy)
    where = f", {task_type} {task_id} of {num_workers(strategy)} workers" if task_type else ""
    return f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s){where}"
