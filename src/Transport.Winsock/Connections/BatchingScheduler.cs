using System.Collections.Concurrent;
using System.IO.Pipelines;

namespace Transport.Winsock.Connections;

/// <summary>
/// Runs the transport's own pipe continuations (a send loop woken by the application's flush, a receive
/// loop released from backpressure) on the thread pool, many per work item: while one batch runs, work
/// scheduled meanwhile joins it instead of costing a work item each. A listener has a few of them, and
/// each connection object keeps one, so a connection's continuations stay in order.
/// </summary>
internal sealed class BatchingScheduler : PipeScheduler, IThreadPoolWorkItem
{
    private readonly ConcurrentQueue<(Action<object?> Action, object? State)> _work = new();
    private int _queued;

    public override void Schedule(Action<object?> action, object? state)
    {
        _work.Enqueue((action, state));
        if (Interlocked.Exchange(ref _queued, 1) == 0)
        {
            System.Threading.ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
        }
    }

    void IThreadPoolWorkItem.Execute()
    {
        while (true)
        {
            while (_work.TryDequeue(out var item))
            {
                item.Action(item.State);
            }

            // Let the next Schedule queue a new batch; if work slipped in before that, take it on here.
            Volatile.Write(ref _queued, 0);
            if (_work.IsEmpty || Interlocked.Exchange(ref _queued, 1) != 0)
            {
                return;
            }
        }
    }
}
