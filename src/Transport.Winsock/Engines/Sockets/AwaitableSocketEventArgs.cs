using System.Net.Sockets;
using System.Threading.Tasks.Sources;

namespace Transport.Winsock.Engines.Sockets;

/// <summary>
/// A <see cref="SocketAsyncEventArgs"/> that is its own awaitable, so an operation allocates nothing.
/// One operation at a time; the result is the bytes transferred, and a failure surfaces as a
/// <see cref="SocketException"/> carrying the socket error.
/// </summary>
internal abstract class AwaitableSocketEventArgs : SocketAsyncEventArgs, IValueTaskSource<int>
{
    // Where an operation that did not complete at once ends: on Unix, .NET's socket engine already hands
    // the completion to the thread pool, so the continuation runs right there (queuing it again would cost
    // a second hop per operation); on Windows completions arrive on I/O completion threads, which must not
    // run the application's code, so the continuation is queued to the thread pool. Kestrel's Sockets
    // transport makes the same choice.
    private static readonly bool s_queueContinuations = OperatingSystem.IsWindows();

    private ManualResetValueTaskSourceCore<int> _source;

    /// <param name="inlineContinuations">Continue inline on Windows too (UnsafePreferInlineScheduling).</param>
    protected AwaitableSocketEventArgs(bool inlineContinuations = false)
        : base(unsafeSuppressExecutionContextFlow: true)
    {
        _source = new() { RunContinuationsAsynchronously = s_queueContinuations && !inlineContinuations };
    }

    /// <summary>Turns the return value of a <c>Socket.XxxAsync(SocketAsyncEventArgs)</c> call into an awaitable.</summary>
    protected ValueTask<int> Await(bool pending)
    {
        if (pending)
        {
            return new ValueTask<int>(this, _source.Version);
        }

        return SocketError == SocketError.Success
            ? new ValueTask<int>(BytesTransferred)
            : ValueTask.FromException<int>(new SocketException((int)SocketError));
    }

    protected override void OnCompleted(SocketAsyncEventArgs e)
    {
        if (SocketError == SocketError.Success)
        {
            _source.SetResult(BytesTransferred);
        }
        else
        {
            _source.SetException(new SocketException((int)SocketError));
        }
    }

    /// <summary>
    /// Registers <paramref name="continuation"/> for the operation pending, as an awaiter's UnsafeOnCompleted
    /// would (no ExecutionContext flows) but with a static delegate and its state, so that a connection keeps
    /// no delegate of its own for it. Only for an operation whose ValueTask did not complete at once.
    /// </summary>
    public void UnsafeOnCompleted(Action<object?> continuation, object state)
        => _source.OnCompleted(continuation, state, _source.Version, ValueTaskSourceOnCompletedFlags.None);

    /// <summary>The result of the operation whose continuation <see cref="UnsafeOnCompleted"/> registered, once it ran (once).</summary>
    public int TakeResult() => ((IValueTaskSource<int>)this).GetResult(_source.Version);

    int IValueTaskSource<int>.GetResult(short token)
    {
        try
        {
            return _source.GetResult(token);
        }
        finally
        {
            _source.Reset();
        }
    }

    ValueTaskSourceStatus IValueTaskSource<int>.GetStatus(short token) => _source.GetStatus(token);

    void IValueTaskSource<int>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => _source.OnCompleted(continuation, state, token, flags);
}
