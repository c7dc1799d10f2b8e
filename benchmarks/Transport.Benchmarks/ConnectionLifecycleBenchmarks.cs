using System.IO.Pipelines;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using BenchmarkDotNet.Attributes;
using Microsoft.AspNetCore.Connections;

namespace Transport.Benchmarks;

/// <summary>
/// One short connection end to end on loopback, through a listener bound as Kestrel binds it: the client
/// connects and sends 1 byte; the server accepts (<see cref="IConnectionListener.AcceptAsync"/>), reads
/// the byte, writes 1 byte, completes its output and input and disposes the connection, as Kestrel does
/// at the end of a connection; the client reads the byte and the FIN and closes.
/// <para>
/// The Winsock transport against Kestrel's Sockets transport (the baseline). The client's work is the
/// same code for both, and its allocations (a new <see cref="Socket"/> per connection, its connect
/// address, the async receive's event args) are in both Allocated figures equally; so is the little the
/// benchmark's own pooled async method costs.
/// </para>
/// </summary>
[MemoryDiagnoser]
public class ConnectionLifecycleBenchmarks
{
    private readonly byte[] _request = [1];
    private readonly byte[] _response = [2];
    private readonly byte[] _clientBuffer = new byte[16];
    private KestrelTransport? _transport;

    // Setup and cleanup block rather than return a Task: BenchmarkDotNet 0.14's in-process toolchain did
    // not await a Task-returning [GlobalSetup(Target = ...)] for the second benchmark of this class (seen
    // here: the benchmark ran before its listener was bound).
    [GlobalSetup(Target = nameof(SocketsTransport))]
    public void SetupSockets() => _transport = KestrelTransport.BindAsync(winsock: false).GetAwaiter().GetResult();

    [GlobalSetup(Target = nameof(WinsockTransport))]
    public void SetupWinsock() => _transport = KestrelTransport.BindAsync(winsock: true).GetAwaiter().GetResult();

    /// <summary>Kestrel's own Sockets transport (SocketTransportFactory).</summary>
    [Benchmark(Baseline = true)]
    public ValueTask SocketsTransport() => OneConnectionAsync();

    /// <summary>This repository's transport (AddWinsockReuseTransport).</summary>
    [Benchmark]
    public ValueTask WinsockTransport() => OneConnectionAsync();

    [GlobalCleanup]
    public void Cleanup()
    {
        if (_transport is null)
        {
            return;
        }

        if (_transport.WinsockCounters is { } counters)
        {
            // Shows in BenchmarkDotNet's log: whether the connections really went through reused sockets.
            Console.WriteLine(
                $"// winsock counters: accepted {counters.ConnectionsAccepted}, sockets created {counters.SocketsCreated}, " +
                $"reused {counters.SocketsReused}, graceful closes {counters.GracefulCloses}, abortive {counters.AbortiveCloses}, " +
                $"drain timeouts {counters.DrainTimeouts}, reuse: {counters.ReuseStatus}");
        }

        _transport.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _transport = null;
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask OneConnectionAsync()
    {
        var transport = _transport ?? throw new InvalidOperationException("GlobalSetup has not bound a listener.");

        // Client: connect and send the request byte. The kernel completes the handshake on loopback
        // without the server's accept, so both run on the calling thread before the first await.
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            client.Connect(transport.EndPoint);
            client.Send(_request);

            // Server: what Kestrel does with a connection that reads one byte and answers one byte.
            var connection = await transport.Listener.AcceptAsync().ConfigureAwait(false)
                ?? throw new InvalidOperationException("The listener stopped accepting.");
            var input = connection.Transport.Input;
            var output = connection.Transport.Output;
            var read = await input.ReadAsync().ConfigureAwait(false);
            while (read.Buffer.IsEmpty && !read.IsCompleted)
            {
                input.AdvanceTo(read.Buffer.Start, read.Buffer.End);
                read = await input.ReadAsync().ConfigureAwait(false);
            }

            if (read.Buffer.Length != 1)
            {
                throw new InvalidOperationException($"The server read {read.Buffer.Length} bytes, not 1.");
            }

            input.AdvanceTo(read.Buffer.End);
            await output.WriteAsync(_response).ConfigureAwait(false);
            await output.CompleteAsync().ConfigureAwait(false);
            await input.CompleteAsync().ConfigureAwait(false);

            // The Winsock transport's dispose completes only after the client's FIN (its graceful close
            // drains to the peer's FIN), so start it, let the client finish, then wait for it.
            var disposed = connection.DisposeAsync();

            // Client: the response byte, then the server's FIN, then close.
            await ReceiveExactlyAsync(client, 1).ConfigureAwait(false);
            await ReceiveExactlyAsync(client, 0).ConfigureAwait(false);
            client.Dispose();

            await disposed.ConfigureAwait(false);
        }
        finally
        {
            client.Dispose();
        }
    }

    private async ValueTask ReceiveExactlyAsync(Socket client, int expected)
    {
        var received = await client.ReceiveAsync(_clientBuffer.AsMemory(), SocketFlags.None).ConfigureAwait(false);
        if (received != expected)
        {
            throw new InvalidOperationException($"The client received {received} bytes, not {expected}.");
        }
    }
}
