using Transport.Winsock.Teardown;

namespace Transport.Tests.Teardown;

public sealed class SocketDeadlineTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task An_armed_deadline_expires_once_and_then_cannot_be_disarmed()
    {
        using var deadline = new SocketDeadline();
        var expired = new TaskCompletionSource<object>(TaskCreationOptions.RunContinuationsAsynchronously);
        var calls = 0;
        var state = new object();

        deadline.Arm(TimeSpan.FromMilliseconds(20), s => { Interlocked.Increment(ref calls); expired.TrySetResult(s); }, state);

        Assert.Same(state, await expired.Task.WaitAsync(Bound, TestContext.Current.CancellationToken));
        Assert.False(deadline.TryDisarm());
        Assert.Equal(1, Volatile.Read(ref calls));
    }

    [Fact]
    public async Task A_deadline_disarmed_in_time_never_fires_and_can_be_armed_again()
    {
        using var deadline = new SocketDeadline();
        var fired = 0;

        deadline.Arm(TimeSpan.FromMilliseconds(200), _ => Interlocked.Increment(ref fired), this);
        Assert.True(deadline.TryDisarm());

        // Re-arm for the next phase; only that one may fire.
        var second = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        deadline.Arm(TimeSpan.FromMilliseconds(400), _ => second.TrySetResult(), this);
        await second.Task.WaitAsync(Bound, TestContext.Current.CancellationToken);

        Assert.Equal(0, Volatile.Read(ref fired));
    }

    [Fact]
    public void Disarming_a_deadline_that_was_never_armed_succeeds()
    {
        using var deadline = new SocketDeadline();
        Assert.True(deadline.TryDisarm());
    }
}
