using System.Threading.Tasks.Sources;

namespace Transport.Winsock.Connections;

/// <summary>
/// A signal that is set once and awaited once, then starts over by itself: a TaskCompletionSource that a
/// pooled connection reuses for each connection it carries instead of allocating a new one.
/// <paramref name="afterResult"/> runs each time the awaiter has taken the result.
/// </summary>
internal sealed class ReusableSignal(bool runContinuationsAsynchronously, Action? afterResult = null)
    : IValueTaskSource<bool>, IValueTaskSource
{
    private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = runContinuationsAsynchronously };

    public void Set(bool value = true) => _core.SetResult(value);

    public ValueTask<bool> WaitAsync() => new(this, _core.Version);

    public ValueTask WaitWithoutResultAsync() => new(this, _core.Version);

    public bool GetResult(short token)
    {
        try
        {
            return _core.GetResult(token);
        }
        finally
        {
            _core.Reset();
            afterResult?.Invoke();
        }
    }

    void IValueTaskSource.GetResult(short token) => GetResult(token);

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => _core.OnCompleted(continuation, state, token, flags);
}
