"""The ClientApp: trains the received model on its partition, evaluates it on its split."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from pytorch_fedavg.task import Net, load_data, test
from pytorch_fedavg.task import train as train_fn

app = ClientApp()


def _data(context: Context):
    pid = int(context.node_config["partition-id"])
    cfg = context.run_config
    return pid, load_data(pid, int(cfg["samples-per-partition"]), int(cfg["seed"]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid, (x, y, _, _) = _data(context)
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    rnd = int(msg.content["config"]["server-round"])
    loss = train_fn(
        net,
        x,
        y,
        epochs=int(context.run_config["local-epochs"]),
        lr=float(msg.content["config"]["lr"]),
        batch_size=int(context.run_config["batch-size"]),
        seed=1000 * rnd + pid,
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(net.state_dict()),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": len(x)}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    _, (_, _, x, y) = _data(context)
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loss, acc = test(net, x, y)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(x)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
