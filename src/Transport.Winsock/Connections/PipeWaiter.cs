using System.IO.Pipelines;
using System.Threading.Tasks.Sources;

namespace Transport.Winsock.Connections;

/// <summary>
/// One awaited operation at a time: Begin, then Complete (by the other side, or by the operation's own
/// cancellation token, see <see cref="PipeCancellation"/>) and OnCompleted (by the awaiter) in either
/// order, whichever comes second hands back the continuation to run; End in GetResult. Changed only
/// under its pipe's lock (InputPipe, OutputPipe); the static helpers take that lock themselves.
/// </summary>
internal struct PipeWaiter
{
    private Action<object?>? _continuation;
    private object? _state;
    private ExecutionContext? _context;
    private short _token;
    private bool _waiting;
    private bool _completed;
    // Completed by its cancellation token (until the next Begin): its GetResult throws OperationCanceledException.
    // Here, not in PipeCancellation, because it fits in this struct's padding.
    private bool _canceledByToken;

    public readonly short Token => _token;

    /// <summary>An operation is pending and not yet completed.</summary>
    public readonly bool IsWaiting => _waiting && !_completed;

    /// <summary>The operation completed and its result is not taken yet.</summary>
    public readonly bool IsCompleted => _waiting && _completed;

    public readonly bool HasContinuation => _continuation is not null;

    /// <summary>The operation was completed by its cancellation token.</summary>
    public readonly bool CanceledByToken => _canceledByToken;

    public void Begin()
    {
        if (IsWaiting)
        {
            // Concurrent reads (or flushes), as a Pipe refuses them: the first awaiter would never resume.
            // One that completed and whose result was never taken is simply superseded, as in a Pipe.
            throw new InvalidOperationException("Concurrent reads or flushes are not supported: the previous one has not completed.");
        }

        _token++;
        _waiting = true;
        _completed = false;
        _canceledByToken = false;
        _continuation = null;
        _state = null;
        _context = null;
    }

    /// <summary>
    /// The pipe is reset for its next connection: a ValueTask of the last one (a late GetResult or
    /// OnCompleted) no longer matches and fails, instead of seeing the next connection's state.
    /// </summary>
    public void Invalidate()
    {
        _token++;
        _waiting = false;
        _completed = false;
        _canceledByToken = false;
        _continuation = null;
        _state = null;
        _context = null;
    }

    public PipeWaiter Complete()
    {
        _completed = true;
        return TakeContinuation();
    }

    /// <summary>Completes the operation as cancelled by its token.</summary>
    public PipeWaiter CompleteByToken()
    {
        _canceledByToken = true;
        return Complete();
    }

    public PipeWaiter OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
    {
        if (token != _token || !_waiting || _continuation is not null)
        {
            throw new InvalidOperationException("The awaited operation is not this one, or is awaited twice: a ValueTask may be awaited once.");
        }

        _continuation = continuation;
        _state = state;
        _context = (flags & ValueTaskSourceOnCompletedFlags.FlowExecutionContext) != 0 ? ExecutionContext.Capture() : null;
        return _completed ? TakeContinuation() : default;
    }

    public void End(short token)
    {
        if (token != _token || !_waiting || !_completed)
        {
            throw new InvalidOperationException("The awaited operation's result was taken twice, or before it completed.");
        }

        _waiting = false;
        _completed = false;
    }

    public readonly ValueTaskSourceStatus GetStatus(short token)
        => token != _token || !_waiting || _completed ? ValueTaskSourceStatus.Succeeded : ValueTaskSourceStatus.Pending;

    /// <summary>
    /// As a Pipe's: an operation that completed and will throw says so to callers that look before they
    /// take the result (Kestrel's flusher takes IsCompletedSuccessfully at its word): Canceled when its token
    /// ended it, else Faulted when <paramref name="faulted"/>.
    /// </summary>
    public readonly ValueTaskSourceStatus GetStatus(short token, bool faulted)
    {
        var status = GetStatus(token);
        return status != ValueTaskSourceStatus.Succeeded || !IsCompleted ? status
            : _canceledByToken ? ValueTaskSourceStatus.Canceled
            : faulted ? ValueTaskSourceStatus.Faulted
            : status;
    }

    /// <summary>
    /// Under the lock, in FlushAsync after its commit, the reader still there: a flush ends at once with
    /// IsCanceled the once after CancelPendingFlush, pauses (<paramref name="flush"/> begun; false) while
    /// the reader has <paramref name="pauseWriterThreshold"/> bytes or more of <paramref name="backlog"/> left,
    /// and else ends at once.
    /// </summary>
    public static bool FlushesAtOnce(ref PipeWaiter flush, ref bool cancelRequested, long pauseWriterThreshold, long backlog, out FlushResult result)
    {
        if (cancelRequested)
        {
            cancelRequested = false;
            result = new FlushResult(isCanceled: true, isCompleted: false);
            return true;
        }

        if (pauseWriterThreshold > 0 && backlog >= pauseWriterThreshold)
        {
            flush.Begin();
            result = default;
            return false;
        }

        result = new FlushResult(isCanceled: false, isCompleted: false);
        return true;
    }

    /// <summary>
    /// CancelPendingRead or CancelPendingFlush: under <paramref name="gate"/>, the pending operation (or,
    /// when none waits, the next) ends with IsCanceled; a continuation due runs on <paramref name="scheduler"/>.
    /// </summary>
    public static void CancelPending(Lock gate, ref PipeWaiter waiter, ref bool cancelRequested, PipeScheduler scheduler)
    {
        PipeWaiter wake = default;
        lock (gate)
        {
            cancelRequested = true;
            if (waiter.IsWaiting)
            {
                wake = waiter.Complete();
            }
        }

        wake.Run(scheduler);
    }

    /// <summary>
    /// IValueTaskSource.OnCompleted: under <paramref name="gate"/>; when the operation has completed
    /// already, its continuation runs on <paramref name="scheduler"/>, outside the lock.
    /// </summary>
    public static void OnCompleted(
        Lock gate,
        ref PipeWaiter waiter,
        Action<object?> continuation,
        object? state,
        short token,
        ValueTaskSourceOnCompletedFlags flags,
        PipeScheduler scheduler)
    {
        PipeWaiter wake;
        lock (gate)
        {
            wake = waiter.OnCompleted(continuation, state, token, flags);
        }

        wake.Run(scheduler);
    }

    private PipeWaiter TakeContinuation()
    {
        var taken = new PipeWaiter { _continuation = _continuation, _state = _state, _context = _context };
        _continuation = null;
        _state = null;
        _context = null;
        return taken;
    }

    /// <summary>Runs the continuation taken (if any) on <paramref name="scheduler"/>, outside the lock.</summary>
    public readonly void Run(PipeScheduler scheduler)
    {
        if (_continuation is null)
        {
            return;
        }

        if (_context is not null)
        {
            scheduler.Schedule(static s => ((ContextContinuation)s!).Run(), new ContextContinuation(_context, _continuation, _state));
        }
        else if (scheduler == PipeScheduler.ThreadPool)
        {
            // Not PipeScheduler.ThreadPool.Schedule, which would carry the waking thread's execution
            // context to a continuation that did not ask for one (a Pipe queues it unsafely, too).
            ThreadPool.UnsafeQueueUserWorkItem(_continuation, _state, preferLocal: false);
        }
        else
        {
            scheduler.Schedule(_continuation, _state);
        }
    }

    private sealed class ContextContinuation(ExecutionContext context, Action<object?> continuation, object? state)
    {
        private static readonly ContextCallback s_run = static s => ((ContextContinuation)s!).Invoke();

        public void Run() => ExecutionContext.Run(context, s_run, this);

        private void Invoke() => continuation(state);
    }
}
