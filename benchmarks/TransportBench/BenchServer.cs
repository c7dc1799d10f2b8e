using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;

namespace TransportBench;

/// <summary>
/// The per-connection work, identical for every transport: read one byte, write one byte, complete both
/// pipes (a graceful FIN), dispose. Nothing else runs, so the cost measured is the transport's. Each
/// connection is served by an idle <see cref="Handler"/> (or a new one), whose single long-lived loop
/// serves one connection after another: the harness allocates nothing per connection itself, so the
/// bytes per connection it reports are the transport's alone.
/// </summary>
internal sealed class BenchServer(IConnectionListener listener)
{
    private readonly Stack<Handler> _idle = new();
    private readonly Lock _idleLock = new();
    private long _completed;
    private long _errors;
    private long _active;
    private int _firstSeen;

    public long Completed => Interlocked.Read(ref _completed);

    public long Errors => Interlocked.Read(ref _errors);

    public long Active => Interlocked.Read(ref _active);

    /// <summary>Completes when the first connection has been served: the client is up and running.</summary>
    public TaskCompletionSource FirstConnection { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public async Task AcceptLoopAsync()
    {
        try
        {
            ConnectionContext? connection;
            while ((connection = await listener.AcceptAsync().ConfigureAwait(false)) != null)
            {
                Interlocked.Increment(ref _active);
                Handler? handler;
                lock (_idleLock)
                {
                    _idle.TryPop(out handler);
                }

                (handler ?? new Handler(this)).Serve(connection);
            }
        }
        catch (Exception ex)
        {
            Interlocked.Increment(ref _errors);
            Console.Error.WriteLine($"server: the accept loop failed: {ex}");
        }
    }

    private void ReturnHandler(Handler handler)
    {
        lock (_idleLock)
        {
            _idle.Push(handler);
        }
    }

    // Pooled: awaited by its handler's loop, so the state machine's box is reused across connections.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask HandleAsync(ConnectionContext connection)
    {
        try
        {
            if (Interlocked.Exchange(ref _firstSeen, 1) == 0)
            {
                // Once, outside the measured period: which pool the transport really handed out.
                var pool = connection.Features.Get<IMemoryPoolFeature>()?.MemoryPool;
                Console.Error.WriteLine($"memory pool: {pool?.GetType().FullName ?? "(no IMemoryPoolFeature)"}; connection: {connection.GetType().FullName}");
            }

            var input = connection.Transport.Input;
            while (true)
            {
                var result = await input.ReadAsync().ConfigureAwait(false);
                var buffer = result.Buffer;
                if (!buffer.IsEmpty)
                {
                    input.AdvanceTo(buffer.GetPosition(1));
                    break;
                }

                if (result.IsCompleted || result.IsCanceled)
                {
                    throw new InvalidOperationException("the client closed before sending its byte");
                }

                input.AdvanceTo(buffer.Start, buffer.End);
            }

            var output = connection.Transport.Output;
            output.GetSpan(1)[0] = (byte)'x';
            output.Advance(1);
            await output.FlushAsync().ConfigureAwait(false);
            await output.CompleteAsync().ConfigureAwait(false);
            await input.CompleteAsync().ConfigureAwait(false);
            await connection.DisposeAsync().ConfigureAwait(false);
            Interlocked.Increment(ref _completed);
            FirstConnection.TrySetResult();
        }
        catch (Exception ex)
        {
            if (Interlocked.Increment(ref _errors) <= 5)
            {
                Console.Error.WriteLine($"server: connection error: {ex.GetType().Name}: {ex.Message}");
            }

            try
            {
                await connection.DisposeAsync().ConfigureAwait(false);
            }
            catch (Exception disposeError)
            {
                Console.Error.WriteLine($"server: dispose after an error failed: {disposeError.GetType().Name}: {disposeError.Message}");
            }
        }
        finally
        {
            Interlocked.Decrement(ref _active);
        }
    }

    /// <summary>Waits, bounded, for the connections still being served after the listener is unbound.</summary>
    public async Task<bool> DrainAsync(TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (Active > 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(10).ConfigureAwait(false);
        }

        return Active == 0;
    }

    /// <summary>Serves one connection at a time, from a loop that lives as long as the process.</summary>
    private sealed class Handler : IValueTaskSource
    {
        private readonly BenchServer _server;
        private ManualResetValueTaskSourceCore<bool> _next = new() { RunContinuationsAsynchronously = true };
        private ConnectionContext? _connection;

        public Handler(BenchServer server)
        {
            _server = server;
            _ = RunAsync();
        }

        public void Serve(ConnectionContext connection)
        {
            _connection = connection;
            _next.SetResult(true);
        }

        private async Task RunAsync()
        {
            while (true)
            {
                await new ValueTask(this, _next.Version).ConfigureAwait(false);
                var connection = _connection!;
                _connection = null;
                await _server.HandleAsync(connection).ConfigureAwait(false);
                _server.ReturnHandler(this);
            }
        }

        void IValueTaskSource.GetResult(short token)
        {
            _next.GetResult(token);
            _next.Reset();
        }

        ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _next.GetStatus(token);

        void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
            => _next.OnCompleted(continuation, state, token, flags);
    }
}
