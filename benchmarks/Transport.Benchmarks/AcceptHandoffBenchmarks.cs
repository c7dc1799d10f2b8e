using System.Runtime.CompilerServices;
using System.Threading.Channels;
using BenchmarkDotNet.Attributes;
using Transport.Winsock.Listener;

namespace Transport.Benchmarks;

/// <summary>
/// The accept-slot handoff: what <c>WinsockConnectionListener</c> does between a posted accept completing
/// (its <c>OnAccepted</c> writes the new connection to an unbounded channel) and Kestrel's accept loop
/// getting it back from <c>AcceptAsync</c> (<c>WaitToReadAsync</c> + <c>TryRead</c>).
/// <para>
/// This mirrors the listener rather than driving it: the listener's channel is fed only by real accepts
/// (that end to end path is <see cref="ConnectionLifecycleBenchmarks"/>). The channel comes from the
/// listener's own <c>CreateAcceptQueue</c>; <see cref="AcceptAsync"/>'s body, including its pooling async
/// method builder, is copied from <c>WinsockConnectionListener</c>; the only difference is that the item
/// is a stand-in object and is not started (<c>connection.Start()</c> would run a connection's loops).
/// </para>
/// </summary>
[MemoryDiagnoser]
public class AcceptHandoffBenchmarks
{
    private const int Handoffs = 1000;

    // The listener's channel: unbounded, one reader (Kestrel's accept loop), many writers (the accept slots).
    private readonly Channel<AcceptedConnection> _accepted = WinsockConnectionListener.CreateAcceptQueue<AcceptedConnection>();

    private readonly AcceptedConnection _connection = new();

    /// <summary>The accept completed before Kestrel asked: the read completes synchronously.</summary>
    [Benchmark]
    public ValueTask<AcceptedConnection?> AcceptAlreadyQueued()
    {
        _accepted.Writer.TryWrite(_connection);
        return AcceptAsync();
    }

    /// <summary>
    /// Kestrel is already waiting when the accept completes (the usual case for an idle server): the
    /// write wakes the waiting reader, whose continuation is queued to the thread pool, as in the listener
    /// (the channel does not allow synchronous continuations). Measured over a run of handoffs in one
    /// invocation, so the figure is the handoff's thread-pool hop rather than BenchmarkDotNet's blocking
    /// wait for an asynchronous benchmark (a thread wake-up per invocation).
    /// </summary>
    [Benchmark(OperationsPerInvoke = Handoffs)]
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask AcceptWaiting()
    {
        for (var i = 0; i < Handoffs; i++)
        {
            var accept = AcceptAsync();
            _accepted.Writer.TryWrite(_connection);
            if (await accept.ConfigureAwait(false) is null)
            {
                throw new InvalidOperationException("The channel was completed.");
            }
        }
    }

    // WinsockConnectionListener.AcceptAsync, less connection.Start().
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<AcceptedConnection?> AcceptAsync(CancellationToken cancellationToken = default)
    {
        while (await _accepted.Reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
        {
            if (_accepted.Reader.TryRead(out var connection))
            {
                return connection;
            }
        }

        return null;
    }

    /// <summary>Stands in for a <c>WinsockConnection</c>: the handoff moves only a reference.</summary>
    public sealed class AcceptedConnection;
}
